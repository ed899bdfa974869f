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


def wandb_records(run_dir):
    """The records of a folder's one offline W&B run: its .wandb file is a LevelDB-style log (32 KiB
    blocks of records with a 7-byte header) of protobuf records, as wandb's writer documents."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    data, pos, block, chunk = open(path, "rb").read(), 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = chunk + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunk)
            yield record
            chunk = b""


def wandb_history(run_dir) -> list[dict]:
    """The history rows of a folder's offline W&B run."""
    return [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
        for record in wandb_records(run_dir)
        if record.WhichOneof("record_type") == "history"
    ]


def wandb_config(run_dir) -> dict:
    """The config a folder's offline W&B run started with."""
    run = next(r.run for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "run")
    return {i.key: json.loads(i.value_json) for i in run.config.update}


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


@pytest.mark.slow
def test_a_resume_into_another_folder_starts_its_own_tracked_runs_linked_to_the_parent(
    tiny_args, tmp_path, monkeypatch
):
    """The seed workflow (train in A, then --resume-from A/best_model.pth into B with other
    settings): B gets its own MLflow and W&B runs, tagged with A's; A's run keeps its params,
    history and artefacts, even in a store both folders share."""
    pytest.importorskip("wandb", reason="--tracker wandb needs pip install 'camodet[wandb]'")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'shared.db'}"  # one store for both, as a team's server would be
    track = ["--tracker", "mlflow", "wandb", "--tracking-uri", uri, "--no-tensorboard"]
    run_a, run_b = tmp_path / "run", tmp_path / "runB"
    assert main(["train", *with_flag(tiny_args, "--epochs", "1"), *track]) == 0
    fork = [*with_flag(tiny_args, "--checkpoint-dir", str(run_b)), "--lr", "0.001"]
    assert main(["train", *fork, "--resume-from", str(run_a / "best_model.pth"), *track]) == 0
    a, b = (json.loads((d / "trackers.json").read_text()) for d in (run_a, run_b))
    assert a["mlflow"]["run_id"] != b["mlflow"]["run_id"] and a["wandb"]["run_id"] != b["wandb"]["run_id"]

    client = mlflow.MlflowClient(tracking_uri=uri)
    parent, child = (client.get_run(ids["mlflow"]["run_id"]) for ids in (a, b))
    assert parent.info.run_name == "run" and parent.data.params["optim.lr"] == "0.0004"
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "loss")] == [1]
    assert child.info.run_name == "runB" and child.data.params["optim.lr"] == "0.001"
    assert child.data.tags["camodet.parent_run"] == parent.info.run_id
    assert child.data.tags["camodet.parent_folder"] == str(run_a)
    for run, folder, lr in ((parent, run_a, 0.0004), (child, run_b, 0.001)):  # each in its own folder
        assert run.info.artifact_uri.startswith((folder / "mlflow-artifacts").as_uri() + "/")
        assert mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/config.json")["optim"]["lr"] == lr
    assert wandb_config(run_b)["camodet.parent_run"] == a["wandb"]["run_id"]
    assert "camodet.parent_run" not in wandb_config(run_a)


@pytest.mark.slow
def test_mlflow_artefacts_follow_the_run_folder_when_it_is_renamed(tiny_args, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, moved = tmp_path / "run", tmp_path / "moved"
    track = ["--tracker", "mlflow", "--no-tensorboard"]
    assert main(["train", *with_flag(tiny_args, "--epochs", "1"), *track]) == 0
    run_id = json.loads((first / "trackers.json").read_text())["mlflow"]["run_id"]
    os.rename(first, moved)  # mv run moved (or a copy to another machine)
    again = [*with_flag(tiny_args, "--checkpoint-dir", str(moved)), "--resume-from", str(moved / "last.pth")]
    assert main(["train", *again, *track]) == 0  # --epochs 2: a warm restart, in place
    assert not first.exists()  # nothing written at the old path
    assert json.loads((moved / "trackers.json").read_text())["mlflow"]["run_id"] == run_id  # continued
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{moved / 'mlflow.db'}")
    here = moved / "mlflow-artifacts" / run_id / "artifacts"
    assert client.get_run(run_id).info.artifact_uri == here.as_uri()
    logged = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.json", "events.jsonl", "export", "report"} <= logged
    assert "warm_restart" in (here / "events.jsonl").read_text()  # the second attempt's, beside the first's


def test_a_tracker_that_fails_after_it_started_is_one_warning_and_training_goes_on(
    tiny_args, tmp_path, monkeypatch, capsys
):
    """A tracker call that fails (here MLflow's first artefact, config.json, on a read-only path) is
    one line; the run trains and writes its files as without the tracker."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system", "/elsewhere/mlflow-artifacts")

    monkeypatch.setattr(mlflow.MlflowClient, "log_dict", read_only)
    one_epoch = with_flag(tiny_args, "--epochs", "1")
    assert main(["train", *one_epoch, "--tracker", "mlflow", "--no-tensorboard"]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("--tracker")]
    assert len(said) == 1 and said[0].startswith("--tracker mlflow: could not start")
    assert "Read-only file system" in said[0] and said[0].endswith("training goes on without it")
    assert [r["epoch"] for r in epoch_records(tmp_path / "run")] == [1]
