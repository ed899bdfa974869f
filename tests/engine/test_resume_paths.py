"""The reference user's path, one point at a time: each test names the way the previous
code went wrong (and fails on it)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import camodet.engine.guard as guard_module
import camodet.engine.step as step_module
import camodet.engine.trainer as trainer
from camodet.cli import main
from camodet.engine.interrupt import EXIT_RESUMABLE
from camodet.engine.loaders import EpochSampler
from camodet.runs import history
from camodet.runs.checkpoint import load_checkpoint

from ..conftest import poison_weights_at


def flag(args, name, value):
    out = list(args)
    out[out.index(name) + 1] = value
    return out


def events(run_dir, kind):
    return [r for r in history.read(os.path.join(run_dir, "metrics.jsonl")) if r["type"] == kind]


def record_lrs(monkeypatch) -> dict:
    """(epoch, step) -> the LR of every optimizer parameter group, as the trainer set it."""
    lrs, real = {}, trainer.set_lrs

    def recording(optimizer, plan, epoch, step, steps_per_epoch, scale=1.0):
        out = real(optimizer, plan, epoch, step, steps_per_epoch, scale)
        lrs[(epoch, step)] = [pg["lr"] for pg in optimizer.param_groups]
        return out

    monkeypatch.setattr(trainer, "set_lrs", recording)
    return lrs


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_exact_resume_of_a_warm_restart_keeps_the_replanned_schedule(
    tiny_args, tmp_path, monkeypatch, capsys
):
    first = tmp_path / "run"
    assert main(["train", *tiny_args]) == 0  # epochs 1-2
    lrs = record_lrs(monkeypatch)
    warm = flag(tiny_args, "--epochs", "5") + ["--skip-stage1", "--stage2-lr", "0.002", "--keep-last", "5"]
    assert (
        main(
            [
                "train",
                *flag(warm, "--checkpoint-dir", str(tmp_path / "warm")),
                "--resume-from",
                str(first / "last.pth"),
            ]
        )
        == 0
    )  # re-planned over epochs 3-5
    uninterrupted = dict(lrs)
    lrs.clear()
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                *flag(warm, "--checkpoint-dir", str(tmp_path / "resumed")),
                "--resume-from",
                str(tmp_path / "warm" / "epoch_3.pth"),
            ]
        )
        == 0
    )
    assert "resuming" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "warm" / "epoch_3.pth")["schedule_start"] == [1, 3]
    assert lrs == {k: v for k, v in uninterrupted.items() if k[0] >= 4} and len(lrs) == 10
    a, b = load_checkpoint(tmp_path / "warm" / "last.pth"), load_checkpoint(tmp_path / "resumed" / "last.pth")
    assert same_tensors(a["model_state_dict"], b["model_state_dict"])


def test_fp16_rollback_restores_the_scaler_and_finishes(tiny_args, tmp_path, monkeypatch):
    # The fp16 path that --amp auto takes on a P100/T4, on the CPU's fp16 autocast with a real GradScaler.
    monkeypatch.setattr(trainer, "amp_dtype", lambda setting, device: torch.float16)
    poison_weights_at(
        monkeypatch, 8
    )  # before the forward of epoch 2, step 2: the guard sees NaN weights after unscale_
    assert main(["train", *tiny_args, "--use-ema"]) == 0
    (rb,) = events(tmp_path / "run", "rollback")
    assert (rb["epoch"], rb["step"]) == (2, 2)
    assert [e["epoch"] for e in events(tmp_path / "run", "epoch")] == [1, 2]
    assert load_checkpoint(tmp_path / "run" / "last.pth")["scaler_state_dict"]["scale"] > 0


def test_resume_needs_neither_the_weights_file_nor_the_network(tiny_args, tmp_path, monkeypatch, capsys):
    import timm

    weights = tmp_path / "edgenext_xx_small.pth"
    torch.save(timm.create_model("edgenext_xx_small", pretrained=False).state_dict(), weights)
    args = flag(tiny_args, "--epochs", "3") + ["--pretrained-path", str(weights), "--keep-last", "3"]
    assert main(["train", *args]) == 0
    weights.unlink()  # a fresh offline notebook
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    full = load_checkpoint(tmp_path / "run" / "last.pth")["model_state_dict"]
    start = str(tmp_path / "run" / "epoch_1.pth")
    for name, extra in (
        ("same-flags", ["--pretrained-path", str(weights)]),
        ("hub-flag", ["--pretrained"]),
        ("no-flag", []),
    ):
        capsys.readouterr()
        cmd = [a for a in flag(args, "--checkpoint-dir", str(tmp_path / name)) if a != str(weights)]
        cmd.remove("--pretrained-path")
        assert main(["train", *cmd, *extra, "--resume-from", start]) == 0, name
        out = capsys.readouterr().out
        assert f"resuming {start} exactly" in out and "warm restart" not in out, name
        assert same_tensors(full, load_checkpoint(tmp_path / name / "last.pth")["model_state_dict"]), name


def test_another_process_count_is_a_declared_warm_restart(tiny_args, tmp_path, capsys):
    assert main(["train", *tiny_args, "--keep-last", "2"]) == 0
    ckpt = load_checkpoint(tmp_path / "run" / "epoch_1.pth")
    assert ckpt["world_size"] == 1
    ckpt["world_size"] = 2  # as written by a 2-process run
    torch.save(ckpt, tmp_path / "two.pth")
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                *flag(tiny_args, "--checkpoint-dir", str(tmp_path / "one")),
                "--resume-from",
                str(tmp_path / "two.pth"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "warm restart" in out and "processes: 2 -> 1" in out
    assert events(tmp_path / "one", "warm_restart")[0]["epoch"] == 2


def test_resuming_where_amp_resolves_otherwise_is_a_declared_warm_restart(
    tiny_args, tmp_path, monkeypatch, capsys
):
    # Started where --amp auto ran fp32 (this CPU), resumed where it runs bf16 (an A100: the
    # CPU's bf16 autocast stands in): the same flags, another computation.
    args = flag(tiny_args, "--epochs", "3") + ["--keep-last", "3"]
    assert main(["train", *args]) == 0
    assert load_checkpoint(tmp_path / "run" / "epoch_1.pth")["autocast"] == "fp32"
    monkeypatch.setattr(trainer, "amp_dtype", lambda setting, device: torch.bfloat16)
    capsys.readouterr()
    bf16 = flag(args, "--checkpoint-dir", str(tmp_path / "bf16"))
    assert main(["train", *bf16, "--resume-from", str(tmp_path / "run" / "epoch_1.pth")]) == 0
    out = capsys.readouterr().out
    assert "warm restart" in out and "autocast: fp32 -> bf16 (--amp auto on this device)" in out
    assert load_checkpoint(tmp_path / "bf16" / "epoch_2.pth")["autocast"] == "bf16"
    # that run resumed on the same kind of device: exact, and it ends where it ended
    again = flag(args, "--checkpoint-dir", str(tmp_path / "again"))
    assert main(["train", *again, "--resume-from", str(tmp_path / "bf16" / "epoch_2.pth")]) == 0
    out = capsys.readouterr().out
    assert f"resuming {tmp_path / 'bf16' / 'epoch_2.pth'} exactly" in out and "warm restart" not in out
    a, b = (load_checkpoint(tmp_path / d / "last.pth") for d in ("bf16", "again"))
    assert same_tensors(a["model_state_dict"], b["model_state_dict"])


class Spikes:
    """Multiplies the loss of chosen training micro-batches by 100; records what the trainer's
    dataset holds and the dataset indices of each training micro-batch (num_workers 0: a batch
    is collated right before its loss)."""

    def __init__(self, monkeypatch, spike):
        import camodet.engine.loaders as loaders

        self.datasets, self.trained, self.spike, collated = [], [], spike, []
        real_collate, real_loss, real_ds = loaders.collate, step_module.total_loss, trainer.CODDataset

        def collate(batch):
            out = real_collate(batch)
            collated.append(out["index"].tolist())
            return out

        def loss(*a, **k):
            self.trained.append(collated[-1])
            value, parts = real_loss(*a, **k)
            return (value * 100 if self.spike(len(self.trained), collated[-1], self) else value), parts

        class Recorded(real_ds):
            def __init__(ds, *a, **k):
                super().__init__(*a, **k)
                self.datasets.append(ds)

        monkeypatch.setattr(loaders, "collate", collate)
        monkeypatch.setattr(step_module, "total_loss", loss)
        monkeypatch.setattr(trainer, "CODDataset", Recorded)
        monkeypatch.setattr(guard_module, "MIN_HISTORY", 3)

    def files(self, indices):
        return sorted(self.datasets[0].samples[i].image for i in indices)


def test_a_one_batch_loss_spike_is_skipped_with_its_files(tiny_args, tmp_path, monkeypatch):
    spikes = Spikes(monkeypatch, lambda call, index, s: call == 12)  # epoch 3, step 1
    assert main(["train", *flag(tiny_args, "--epochs", "3")]) == 0
    (skip,) = events(tmp_path / "run", "skipped_step")
    assert (skip["epoch"], skip["step"]) == (3, 1) and "loss spike" in skip["reason"]
    assert skip["files"] == spikes.files(spikes.trained[11]) and len(skip["files"]) == 4
    assert not events(tmp_path / "run", "rollback")
    assert [e["skipped_steps"] for e in events(tmp_path / "run", "epoch")] == [0, 0, 1]


def test_persistent_spikes_on_the_same_files_are_called_a_data_problem(
    tiny_args, tmp_path, monkeypatch, capsys
):
    args = flag(flag(tiny_args, "--batch-size", "2"), "--stage1-epochs", "2") + ["--max-rollbacks", "2"]

    def bad_pair(call, index, s):  # the first images of windows 5 and 6 of epoch 1 are mislabelled
        order = EpochSampler(len(s.datasets[0]), 1, 1).indices()
        return bool({order[10], order[12]} & set(index))

    spikes = Spikes(monkeypatch, bad_pair)
    assert main(["train", *args]) == 3
    err = capsys.readouterr().err
    order = EpochSampler(len(spikes.datasets[0]), 1, 1).indices()
    assert "a data problem is likely" in err and "camodet data check" in err
    for f in spikes.files([order[10], order[12]]):
        assert f in err
    rollbacks = events(tmp_path / "run", "rollback")
    assert len(rollbacks) == 2 and rollbacks[0]["files"] == rollbacks[1]["files"]


def test_persistent_spikes_on_moving_files_point_at_the_learning_rate(
    tiny_args, tmp_path, monkeypatch, capsys
):
    args = flag(flag(tiny_args, "--batch-size", "2"), "--stage1-epochs", "2") + ["--max-rollbacks", "2"]
    Spikes(monkeypatch, lambda call, index, s: call >= 8)  # from epoch 1, step 7 on
    assert main(["train", *args]) == 3
    err = capsys.readouterr().err
    assert "points at the learning rate" in err and "a data problem" not in err and "--lr" in err


def test_time_limit_stops_resumably_and_prints_the_command(tiny_args, tmp_path, monkeypatch, capsys):
    import camodet.engine.interrupt as interrupt

    clock = [0.0]
    monkeypatch.setattr(interrupt, "clock", lambda: clock[0])
    real_set_lrs, calls = trainer.set_lrs, [0]

    def ticking(*a):  # every optimizer step takes a minute on this clock
        calls[0] += 1
        clock[0] += 60.0
        return real_set_lrs(*a)

    monkeypatch.setattr(trainer, "set_lrs", ticking)
    args = flag(tiny_args, "--epochs", "3") + ["--time-limit", "7m30s", "--overwrite"]
    assert main(["train", *args]) == EXIT_RESUMABLE
    err = capsys.readouterr().err
    last = str(tmp_path / "run" / "last.pth")
    command = err.split("continue exactly with:\n", 1)[1].strip()
    assert "stopped by time limit" in err and command.endswith(f"--resume-from {last}")
    assert "--overwrite" not in command and "--time-limit 7m30s" in command
    ckpt = load_checkpoint(last)
    assert ckpt["epoch"] == 1 and ckpt["position"]["epoch"] == 2 and 0 < ckpt["position"]["micro_step"] < 5
    monkeypatch.setattr(trainer, "set_lrs", real_set_lrs)
    clock[0] = 0.0
    import shlex

    words = shlex.split(command)
    assert main(words[words.index("train") :]) == 0
    assert [e["epoch"] for e in events(tmp_path / "run", "epoch")] == [1, 2, 3]


BUFFER_DUMP = """
import os, sys, torch
import camodet.engine.distributed as dist_mod
real = dist_mod.check_in_sync
def dump_then_check(model, d):
    torch.save({k: v for k, v in model.state_dict().items() if v.is_floating_point()},
               os.path.join(os.environ["DUMP_DIR"], f"rank{d.rank}.pt"))
    return real(model, d)
dist_mod.check_in_sync = dump_then_check
from camodet.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_batchnorm_statistics_agree_across_ranks(synth_root, tmp_path):
    script = tmp_path / "dump.py"
    script.write_text(textwrap.dedent(BUFFER_DUMP))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29541",
        str(script),
        "train",
        "--dataset-path",
        synth_root,
        "--checkpoint-dir",
        str(tmp_path / "run"),
        "--backbone",
        "mobilenetv3_small_050",
        "--num-experts",
        "2",
        "--img-size",
        "64",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--decoder-channels",
        "16",
        "--epochs",
        "2",
        "--stage1-epochs",
        "0",
        "--use-ema",
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "DUMP_DIR": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    stats = [k for k in r0 if "running_mean" in k or "running_var" in k]
    assert stats and all(torch.equal(r0[k], r1[k]) for k in r0)
    # an EMA run's model_state_dict is the EMA (what validation used); the trained weights sit beside it
    saved = load_checkpoint(tmp_path / "run" / "last.pth")["raw_model_state_dict"]
    assert all(torch.equal(saved[k], r0[k]) for k in stats)
    assert "hold identical parameters" in proc.stdout


def test_time_limit_before_validation_keeps_the_pass_and_resumes_exactly(
    tiny_args, tmp_path, monkeypatch, capsys
):
    """The limit arrives after an epoch's last step, when validation and the save no longer
    fit: the finished pass is saved as a position, and the resumed run validates it."""
    import camodet.engine.interrupt as interrupt

    args = flag(tiny_args, "--epochs", "3")
    assert main(["train", *flag(args, "--checkpoint-dir", str(tmp_path / "full"))]) == 0
    clock, passes = [0.0], [0]
    monkeypatch.setattr(interrupt, "clock", lambda: clock[0])
    real_sync = trainer.distributed.sync_buffers

    def end_of_pass(module, d):  # called once per finished pass (no EMA): epoch 2 ends near the limit
        passes[0] += 1
        if passes[0] == 2:
            clock[0] = 3600.0 - 1.5  # less than validation + two saves away
        return real_sync(module, d)

    monkeypatch.setattr(trainer.distributed, "sync_buffers", end_of_pass)
    cut = flag(args, "--checkpoint-dir", str(tmp_path / "cut")) + ["--time-limit", "1h"]
    assert main(["train", *cut]) == EXIT_RESUMABLE
    assert "stopped by time limit" in capsys.readouterr().err
    ckpt = load_checkpoint(tmp_path / "cut" / "last.pth")
    assert ckpt["epoch"] == 1 and ckpt["position"]["epoch"] == 2 and ckpt["position"]["micro_step"] == 5
    monkeypatch.setattr(trainer.distributed, "sync_buffers", real_sync)
    clock[0] = 0.0
    assert main(["train", *cut, "--resume-from", str(tmp_path / "cut" / "last.pth")]) == 0
    keep = ("epoch", "loss", "val", "global_step")
    ea, eb = events(tmp_path / "full", "epoch"), events(tmp_path / "cut", "epoch")
    assert [{k: r[k] for k in keep} for r in ea] == [{k: r[k] for k in keep} for r in eb]
    assert same_tensors(
        load_checkpoint(tmp_path / "full" / "last.pth")["model_state_dict"],
        load_checkpoint(tmp_path / "cut" / "last.pth")["model_state_dict"],
    )


def test_resuming_in_place_from_an_earlier_epoch_leaves_the_abandoned_branchs_best(
    tiny_args, tmp_path, monkeypatch, capsys
):
    """The first branch validates 0.15, 0.27 (best at 2); resumed from epoch_1.pth, the new epoch 2
    scores 0.10: the run's best is epoch 1, and so must best_model.pth be."""
    scores = iter([0.15, 0.27, 0.10])
    monkeypatch.setattr(trainer, "validate", lambda *a, **k: {"IoU": next(scores)})
    args = flag(tiny_args, "--stage1-epochs", "2") + ["--keep-last", "2"]
    run = tmp_path / "run"
    assert main(["train", *args]) == 0
    assert load_checkpoint(run / "best_model.pth")["epoch"] == 2
    capsys.readouterr()
    assert main(["train", *args, "--resume-from", str(run / "epoch_1.pth")]) == 0
    assert "best validation IoU 0.1500 at epoch 1" in capsys.readouterr().out
    best = load_checkpoint(run / "best_model.pth")
    assert (best["epoch"], best["best_iou"]) == (1, 0.15)
    assert same_tensors(best["model_state_dict"], load_checkpoint(run / "epoch_1.pth")["model_state_dict"])
