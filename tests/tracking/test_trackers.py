import glob
import json
import os
import struct

import pytest

from camodet.cli import main
from camodet.runs import history

mlflow = pytest.importorskip("mlflow", reason="--tracker mlflow needs pip install 'camodet[mlflow]'")


def with_flag(args: list[str], name: str, value: str) -> list[str]:
    i = args.index(name)
    return args[: i + 1] + [value] + args[i + 2 :]


def epoch_records(run_dir) -> list[dict]:
    return [r for r in history.read(os.path.join(run_dir, "metrics.jsonl")) if r["type"] == "epoch"]


@pytest.fixture(autouse=True)
def no_onnx_trace(monkeypatch):
    """The export artefact without model.onnx: tracing the graph would add ~15 s to each run."""
    monkeypatch.setattr("camodet.tracking.hook.onnx_available", lambda: False)


@pytest.mark.slow
def test_mlflow_run_holds_the_epochs_and_continues_after_a_resume(tiny_args, tmp_path):
    run = tmp_path / "run"
    one_epoch = with_flag(tiny_args, "--epochs", "1")
    assert main(["train", *one_epoch, "--tracker", "mlflow", "--no-tensorboard"]) == 0
    first = json.loads((run / "trackers.json").read_text())["mlflow"]
    assert first["tracking_uri"] == f"sqlite:///{run / 'mlflow.db'}"
    resumed = ["--resume-from", str(run / "last.pth"), "--tracker", "mlflow", "--no-tensorboard"]
    assert main(["train", *tiny_args, *resumed]) == 0  # --epochs 2: a warm restart, same tracked run
    assert json.loads((run / "trackers.json").read_text())["mlflow"]["run_id"] == first["run_id"]

    client = mlflow.MlflowClient(tracking_uri=first["tracking_uri"])
    assert len(client.search_runs([client.get_experiment_by_name("camodet").experiment_id])) == 1
    records = epoch_records(run)
    assert [r["epoch"] for r in records] == [1, 2]
    for key, field in (("loss", lambda r: r["loss"]), ("val/IoU", lambda r: r["val"]["IoU"])):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(first["run_id"], key))
        assert logged == [(r["epoch"], pytest.approx(field(r))) for r in records]
    tracked = client.get_run(first["run_id"])
    assert tracked.info.status == "FINISHED" and tracked.data.params["optim.lr"] == "0.0004"
    assert "event/warm_restart" in tracked.data.metrics
    artefacts = {a.path for a in client.list_artifacts(first["run_id"])}
    assert {"config.json", "events.jsonl", "export", "report"} <= artefacts
    assert {os.path.basename(a.path) for a in client.list_artifacts(first["run_id"], "export")} == {
        "config.json",
        "model.safetensors",
    }


def wandb_history(run_dir) -> list[dict]:
    """The history rows of an offline W&B run: its .wandb file is a LevelDB-style log (32 KiB
    blocks of records with a 7-byte header) of protobuf records, as wandb's writer documents."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    data, pos, block, chunk, rows = open(path, "rb").read(), 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = chunk + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunk)
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                )
            chunk = b""
    return rows


@pytest.mark.slow
def test_wandb_offline_holds_the_epochs_and_a_tracker_that_cannot_start_is_a_warning(
    tiny_args, tmp_path, monkeypatch, capsys
):
    pytest.importorskip("wandb", reason="--tracker wandb needs pip install 'camodet[wandb]'")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bad = ["--tracker", "wandb", "mlflow", "--tracking-uri", "nosuchscheme://nowhere", "--no-tensorboard"]
    assert main(["train", *tiny_args, *bad]) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("--tracker mlflow: could not start")]
    assert (
        len(warnings) == 1 and "nosuchscheme://nowhere" in warnings[0] and "training goes on" in warnings[0]
    )
    run = tmp_path / "run"
    assert os.environ["WANDB_MODE"] == "offline" and set(json.loads((run / "trackers.json").read_text())) == {
        "wandb"
    }
    rows = [r for r in wandb_history(run) if "loss" in r]
    records = epoch_records(run)
    assert [(r["epoch"], r["loss"], r["val/IoU"], r["lr"]) for r in rows] == [
        (r["epoch"], pytest.approx(r["loss"]), pytest.approx(r["val"]["IoU"]), pytest.approx(r["lr"]))
        for r in records
    ]


def test_an_unknown_tracker_is_refused_before_training(tiny_args, capsys):
    assert main(["train", *tiny_args, "--tracker", "neptune"]) == 2
    assert "--tracker 'neptune' is not one of wandb, mlflow" in capsys.readouterr().err
