"""Fault injection: each test fails if the protection it names is removed."""

import errno
import glob
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import camodet.engine.step as step_module
import camodet.engine.trainer as trainer
from camodet.cli import main
from camodet.runs import history
from camodet.runs.checkpoint import CheckpointError, atomic_save, load_checkpoint, nonfinite_tensors

from ..conftest import poison_weights_at

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def inject_loss(monkeypatch, fault):
    """Wrap the trainer's loss; `fault(call, loss)` sees every training micro-batch (1-based)."""
    real, calls = step_module.total_loss, [0]

    def loss_fn(*args, **kwargs):
        calls[0] += 1
        loss, parts = real(*args, **kwargs)
        return fault(calls[0], loss), parts

    monkeypatch.setattr(step_module, "total_loss", loss_fn)


def run_files_finite(run_dir):
    files = glob.glob(os.path.join(run_dir, "*.pth"))
    assert files
    for f in files:
        assert nonfinite_tensors(load_checkpoint(f)) == [], f


def events(run_dir, kind):
    return [r for r in history.read(os.path.join(run_dir, "metrics.jsonl")) if r["type"] == kind]


def test_nan_loss_in_fp32_skips_one_step(tiny_args, tmp_path, monkeypatch):
    # tiny_args: 19 training images, batch 4 -> 5 steps per epoch; call 7 is epoch 2, step 1
    inject_loss(monkeypatch, lambda call, loss: loss * math.nan if call == 7 else loss)
    assert main(["train", *tiny_args]) == 0
    skipped = events(tmp_path / "run", "skipped_step")
    assert [(e["epoch"], e["step"]) for e in skipped] == [(2, 1)] and "non-finite" in skipped[0]["reason"]
    epochs = events(tmp_path / "run", "epoch")
    assert [e["skipped_steps"] for e in epochs] == [0, 1] and not events(tmp_path / "run", "rollback")
    assert math.isfinite(epochs[-1]["val"]["IoU"])
    run_files_finite(tmp_path / "run")


def test_nan_weights_mid_epoch_roll_back_with_lower_lr(tiny_args, tmp_path, monkeypatch):
    poison_weights_at(monkeypatch, 8)  # before the forward of epoch 2, step 2
    assert main(["train", *tiny_args, "--use-ema"]) == 0
    (rb,) = events(tmp_path / "run", "rollback")
    assert (rb["epoch"], rb["step"], rb["lr_scale"]) == (2, 2, 0.5) and "non-finite weights" in rb["reason"]
    epochs = events(tmp_path / "run", "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2] and epochs[1]["lr_scale"] == 0.5
    assert load_checkpoint(tmp_path / "run" / "last.pth")["lr_scale"] == 0.5
    run_files_finite(tmp_path / "run")


def test_persistent_divergence_stops_with_advice(tiny_args, tmp_path, monkeypatch, capsys):
    inject_loss(monkeypatch, lambda call, loss: loss * math.nan if call >= 7 else loss)
    args = [*tiny_args, "--max-rollbacks", "2", "--stage2-lr", "0.0002"]
    best = tmp_path / "run" / "best_model.pth"
    assert main(["train", *args]) == 3
    err = capsys.readouterr().err
    assert "training diverged at epoch 2 (stage 2)" in err and "2 rollback(s)" in err
    assert f"last good checkpoint: {tmp_path / 'run' / 'last.pth'} (epoch 1)" in err
    assert "x0.25" in err and "--stage2-lr 2.5e-05" in err  # 0.0002 x 0.25 failed: suggest the next halving
    assert len(events(tmp_path / "run", "rollback")) == 2 and len(events(tmp_path / "run", "diverged")) == 1
    kept = load_checkpoint(best)
    assert kept["epoch"] == 1 and nonfinite_tensors(kept) == []
    run_files_finite(tmp_path / "run")


def test_exception_mid_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    atomic_save({"model_state_dict": {"w": torch.ones(3)}, "epoch": 1}, str(path))
    before = path.read_bytes()

    def torn_save(obj, fh):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("power cut")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(RuntimeError, match="power cut"):
        atomic_save({"model_state_dict": {"w": torch.zeros(3)}, "epoch": 2}, str(path))

    def disk_full(obj, fh):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(
        CheckpointError, match=r"could not write .*last\.pth \(No space left on device\); the previous"
    ):
        atomic_save({"model_state_dict": {"w": torch.zeros(3)}, "epoch": 2}, str(path))
    monkeypatch.undo()
    assert path.read_bytes() == before and load_checkpoint(str(path))["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pth"]  # no temp files left behind


DRIVER = """
import os, signal, sys, time
import camodet.engine.step as t
from camodet.cli import main
real, calls, at = t.total_loss, [0], int(os.environ["FAULT_AT"])
def loss(*a, **k):
    calls[0] += 1
    if calls[0] == at:
        {fault}
    return real(*a, **k)
t.total_loss = loss
{extra}
sys.exit(main(sys.argv[1:]))
"""


def driver(tmp_path, fault, extra=""):
    path = tmp_path / "driver.py"
    path.write_text(DRIVER.format(fault=fault, extra=textwrap.dedent(extra)))
    return str(path)


def test_sigterm_mid_epoch_then_resume_equals_uninterrupted(tiny_args, tmp_path):
    args = [a for a in tiny_args] + [
        "--epochs",
        "3",
        "--accumulation-steps",
        "2",
        "--use-ema",
        "--ema-decay",
        "0.9",
        "--num-workers",
        "1",
    ]
    full = tmp_path / "full"
    assert main(["train", *args, "--checkpoint-dir", str(full)]) == 0
    cut = tmp_path / "cut"
    script = driver(tmp_path, "os.kill(os.getpid(), signal.SIGTERM)")
    proc = subprocess.run(
        [sys.executable, script, "train", *args, "--checkpoint-dir", str(cut)],
        env={**os.environ, "FAULT_AT": "8"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "resumable checkpoint" in proc.stderr
    mid = load_checkpoint(str(cut / "last.pth"))
    # signalled in micro-batch 3 of epoch 2: its optimizer step (micro-batches 3-4) finished first
    assert mid["epoch"] == 1 and mid["position"]["epoch"] == 2 and mid["position"]["micro_step"] == 4
    assert main(["train", *args, "--checkpoint-dir", str(cut), "--resume-from", str(cut / "last.pth")]) == 0
    a, b = load_checkpoint(str(full / "last.pth")), load_checkpoint(str(cut / "last.pth"))
    assert a["epoch"] == b["epoch"] == 3 and a["global_step"] == b["global_step"] and "position" not in b
    for key in ("model_state_dict", "ema_state_dict", "optimizer_state_dict"):
        flat_a, flat_b = _tensors(a[key]), _tensors(b[key])
        assert flat_a.keys() == flat_b.keys() and all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a), key
    same = ("epoch", "loss", "loss_main", "val", "global_step", "expert_usage")
    ra, rb = events(full, "epoch"), events(cut, "epoch")
    assert [{k: r[k] for k in same} for r in ra] == [{k: r[k] for k in same} for r in rb]
    assert events(cut, "interrupted")[0]["micro_step"] == 4


def _tensors(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_tensors(v, f"{prefix}{k}."))
        elif isinstance(v, torch.Tensor):
            out[f"{prefix}{k}"] = v
    return out


def test_watchdog_dumps_stacks_when_a_worker_hangs(tiny_args, tmp_path):
    hang = """
    import camodet.data.dataset as ds
    real_get, fetched = ds.CODDataset.__getitem__, [0]
    def hanging_getitem(self, key):
        fetched[0] += 1
        if fetched[0] == 6:
            time.sleep(3600)
        return real_get(self, key)
    ds.CODDataset.__getitem__ = hanging_getitem
    """
    script = driver(tmp_path, "pass", hang)
    start = time.time()
    proc = subprocess.run(
        [sys.executable, script, "train", *tiny_args, "--num-workers", "1", "--stall-timeout", "5"],
        env={**os.environ, "FAULT_AT": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.time() - start
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "no optimizer step finished for" in out and "--num-workers 0" in out
    (dump,) = glob.glob(str(tmp_path / "run" / "stall-*.txt"))
    text = open(dump).read()
    assert "data loader: 1 workers" in text and "train_one_epoch" in text  # the trainer's stack
    assert "hanging_getitem" in text  # the worker's stack
    assert elapsed < 60, elapsed


class Opaque:
    """Something weights_only loading refuses to unpickle."""


def test_inspect_reports_and_exit_codes(tiny_checkpoint, tmp_path, capsys):
    clean_checkpoint = tiny_checkpoint
    assert main(["inspect", str(clean_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "CLEAN" in out and "after epoch 1" in out and "edgenext_xx_small, 2 experts" in out
    assert "best IoU     " in out and "ema (+ EMA)" in out

    ckpt = torch.load(clean_checkpoint, weights_only=True)
    name = next(k for k in ckpt["model_state_dict"] if k.endswith("weight"))
    ckpt["model_state_dict"][name][0] = math.nan
    torch.save(ckpt, tmp_path / "nan.pth")
    assert main(["inspect", str(tmp_path / "nan.pth"), "--json"]) == 1
    import json

    report = json.loads(capsys.readouterr().out)
    # in best_model.pth of an EMA run the model weights are the EMA tensors: both are named
    assert report["status"] == "non-finite" and f"model_state_dict.{name}" in report["nonfinite_tensors"]
    assert all(name in t for t in report["nonfinite_tensors"])

    data = clean_checkpoint.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    assert main(["inspect", str(tmp_path / "cut.pth")]) == 2
    assert "BROKEN (corrupt)" in capsys.readouterr().out

    torch.save({"model_state_dict": {}, "extra": Opaque()}, tmp_path / "pickle.pth")
    assert main(["inspect", str(tmp_path / "pickle.pth")]) == 2
    out = capsys.readouterr().out
    assert "BROKEN (unsafe)" in out and "untrusted code" in out and "weights_only=False" in out


def test_training_refuses_pickle_checkpoint(tiny_args, tmp_path, capsys):
    torch.save({"model_state_dict": {}, "extra": Opaque()}, tmp_path / "pickle.pth")
    assert main(["train", *tiny_args, "--resume-from", str(tmp_path / "pickle.pth")]) == 2
    assert "could run untrusted code" in capsys.readouterr().err


def test_fp16_overflow_steps_are_skipped_by_the_scaler_not_treated_as_divergence(
    tiny_args, tmp_path, monkeypatch
):
    # The GPU's fp16 path, run on the CPU: fp16 autocast and a real GradScaler whose first
    # scale (2**30) makes the scaled gradients overflow fp16 until it has backed off.
    import functools

    monkeypatch.setattr(trainer, "amp_dtype", lambda setting, device: torch.float16)
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=2.0**30))
    assert main(["train", *tiny_args, "--epochs", "3", "--max-nonfinite-steps", "2"]) == 0
    epochs = events(tmp_path / "run", "epoch")
    overflows = [e["overflow_steps"] for e in epochs]
    # every step of epoch 1 overflows (more than --max-nonfinite-steps); by epoch 3 the scale has backed off
    assert overflows[0] == 5 and sum(overflows) > 2 and overflows[-1] < 5
    assert [e["skipped_steps"] for e in epochs] == [0, 0, 0]
    assert not events(tmp_path / "run", "rollback") and not events(tmp_path / "run", "skipped_step")
    assert epochs[-1]["global_step"] == 15  # overflow steps count as steps, as in an uninterrupted fp32 run
    scale = load_checkpoint(tmp_path / "run" / "last.pth")["scaler_state_dict"]["scale"]
    assert 0 < scale < 2.0**30
    run_files_finite(tmp_path / "run")


def test_bf16_autocast_run_trains_validates_and_saves_fp32(tiny_args, tmp_path, monkeypatch):
    # The H100's default path (--amp auto = bf16), run on the CPU's bf16 autocast.
    monkeypatch.setattr(trainer, "amp_dtype", lambda setting, device: torch.bfloat16)
    assert main(["train", *tiny_args, "--use-ema"]) == 0
    epochs = events(tmp_path / "run", "epoch")
    assert [e["skipped_steps"] + e["overflow_steps"] for e in epochs] == [0, 0]
    assert all(math.isfinite(e["loss"]) and 0 <= e["val"]["IoU"] <= 1 for e in epochs)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pth")
    assert {t.dtype for t in ckpt["model_state_dict"].values() if t.is_floating_point()} == {torch.float32}
    run_files_finite(tmp_path / "run")


def test_another_tools_weights_are_named_with_the_way_out(synth_root, tmp_path, capsys):
    import timm

    foreign = tmp_path / "edgenext.pth"
    torch.save(timm.create_model("edgenext_xx_small", pretrained=False).state_dict(), foreign)
    for args in (
        ["evaluate", str(foreign), "--dataset-path", synth_root],
        ["predict", str(foreign), synth_root, "--out", str(tmp_path / "p")],
        ["export", str(foreign), str(tmp_path / "e")],
    ):
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"camodet: error: {foreign}: not a camodet checkpoint") and "\n" not in err
        assert err.endswith("go to --pretrained-path)")


def test_a_full_disk_mid_run_keeps_the_previous_checkpoints_and_resumes(
    tiny_args, tmp_path, monkeypatch, capsys
):
    # Saves of tiny_args: epoch 1 writes last.pth (1) and best_model.pth (2); epoch 2's last.pth is the 3rd.
    import camodet.runs.checkpoint as checkpoint

    real_save, saves = torch.save, [0]

    def save_until_the_disk_fills(obj, fh, *args, **kwargs):
        saves[0] += 1
        if saves[0] == 3:
            fh.write(b"PK\x03\x04 the start of a checkpoint")  # some bytes reach the disk first
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, fh, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_the_disk_fills)
    run = tmp_path / "run"
    assert main(["train", *tiny_args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"camodet: error: could not write {run / 'last.pth'}"), err
    assert (
        "No space left on device" in err[0]
        and "free" in err[0]
        and f"--resume-from {run / 'last.pth'}" in err[0]
    )
    assert sorted(os.listdir(run)) == [
        "best_model.pth",
        "config.yaml",
        "last.pth",
        "metrics.jsonl",
        "tensorboard",
    ]
    assert (
        load_checkpoint(run / "last.pth")["epoch"] == 1
        and load_checkpoint(run / "best_model.pth")["epoch"] == 1
    )
    monkeypatch.setattr(checkpoint.torch, "save", real_save)  # space freed
    assert main(["train", *tiny_args, "--resume-from", str(run / "last.pth")]) == 0
    assert load_checkpoint(run / "last.pth")["epoch"] == 2
    assert [e["epoch"] for e in events(run, "epoch")] == [1, 2]


@pytest.mark.parametrize("fault", ["kill", "corrupt"])
def test_a_loader_worker_killed_or_raising_mid_epoch_ends_the_run_in_one_line_and_resumes(
    synth_root, tmp_path, monkeypatch, capsys, fault
):
    """The loader worker of epoch 2 (a fork of this process, so it runs the patched dataset)
    gets SIGKILL, as from the out-of-memory killer, or meets an image that has just become
    unreadable, at its 9th sample (of 19): epoch 1's last.pth stays and the run goes on from it."""
    import shutil

    import camodet.data.dataset as dataset
    from camodet.data.dataset import index_seed

    from ..conftest import tiny_flags, truncate

    root = tmp_path / "COD10K-v3"
    shutil.copytree(synth_root, root)
    run = tmp_path / "run"
    args = ["train", *tiny_flags(str(root), run), "--num-workers", "1"]
    real_getitem, fetched, spoilt = dataset.CODDataset.__getitem__, [0], []

    def getitem(self, key):
        index, seed = key if self.train else (key, None)
        if seed == index_seed(1, 2, index):  # epoch 2 of seed 1 (tiny_flags)
            fetched[0] += 1  # in the worker: a fresh fork of this process each epoch
            if fetched[0] == 9 and fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if fetched[0] == 9:
                spoilt.append(self.samples[index].image)
                truncate(spoilt[-1])
        return real_getitem(self, key)

    monkeypatch.setattr(dataset.CODDataset, "__getitem__", getitem)
    started = time.monotonic()
    assert main(args) == 2
    assert time.monotonic() - started < 120
    err = capsys.readouterr().err.strip().splitlines()
    said = {
        "kill": r"DataLoader worker \(pid.*\d+\) (is killed by signal: Killed|exited unexpectedly): "
        r"the out-of-memory killer .*--num-workers",
        "corrupt": r"Train/Image/.*\.jpg: unreadable image .*; replace it or use --skip-bad-files$",
    }[fault]
    assert len(err) == 1 and re.search(said, err[0]), err
    if fault == "kill":
        assert err[0].endswith(f"then --resume-from {run / 'last.pth'} continues after epoch 1")
    assert not [f for f in os.listdir(run) if f.startswith(".")]
    assert load_checkpoint(run / "last.pth")["epoch"] == 1 and [e["epoch"] for e in events(run, "epoch")] == [
        1
    ]
    for f in glob.glob(str(root / "Train" / "Image" / "*")):  # the file replaced, as the message says
        shutil.copy(os.path.join(synth_root, "Train", "Image", os.path.basename(f)), f)
    monkeypatch.undo()
    assert main([*args, "--resume-from", "auto"]) == 0
    assert load_checkpoint(run / "last.pth")["epoch"] == 2 and [e["epoch"] for e in events(run, "epoch")] == [
        1,
        2,
    ]
