import os
import subprocess
import sys

import pytest
import torch

from camodet import Predictor
from camodet.cli import main
from camodet.config import ModelConfig
from camodet.engine.hooks import Hook
from camodet.engine.trainer import Trainer
from camodet.fields import make
from camodet.models import build_model
from camodet.options import EvaluateOptions
from camodet.runs import history
from camodet.runs.checkpoint import load_checkpoint

from ..conftest import tiny_config, truncate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(*args):
    flat = [a for part in args for a in ([part] if isinstance(part, str) else part)]
    assert main(["train", *flat]) == 0


def flag(args, name, value):
    """Replace the value of `name` in an argument list."""
    out = list(args)
    out[out.index(name) + 1] = value
    return out


def weights(path, key="model_state_dict"):
    return load_checkpoint(path)[key]


def test_stage1_keeps_backbone_bit_identical(tiny_args, tmp_path):
    args = flag(flag(tiny_args, "--backbone", "resnet18"), "--stage1-epochs", "2")
    run(args)
    torch.manual_seed(1)  # the trainer seeds with --seed before building
    init = build_model(ModelConfig(backbone="resnet18", num_experts=3, decoder_channels=16)).state_dict()
    after = weights(tmp_path / "run" / "last.pth")
    backbone = [k for k in init if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone)
    assert all(torch.equal(init[k], after[k]) for k in backbone)  # weights and BN statistics
    assert not all(torch.equal(init[k], after[k]) for k in init if k.startswith("decoder."))


def test_accumulation_matches_bigger_batch(tiny_args, tmp_path):
    base = tiny_args + [
        "--moe-loss-weight",
        "0",
        "--epochs",
        "1",
        "--stage1-epochs",
        "0",
        "--val-fraction",
        "0.2",
    ]
    a = flag(flag(base, "--batch-size", "4"), "--checkpoint-dir", str(tmp_path / "a")) + [
        "--accumulation-steps",
        "2",
    ]
    b = flag(flag(base, "--batch-size", "8"), "--checkpoint-dir", str(tmp_path / "b"))
    run(a)
    run(b)
    wa, wb = weights(tmp_path / "a" / "last.pth"), weights(tmp_path / "b" / "last.pth")
    assert load_checkpoint(tmp_path / "a" / "last.pth")["global_step"] == 3  # 19 images: 8 + 8 + 3
    # sums run in another order, so equal within float tolerance rather than bitwise
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=2e-5, rtol=1e-4), k


def test_resume_equals_uninterrupted(tiny_args, tmp_path):
    args = flag(tiny_args, "--epochs", "4") + [
        "--stage1-epochs",
        "1",
        "--accumulation-steps",
        "2",
        "--use-ema",
        "--ema-decay",
        "0.9",
        "--progressive-unfreeze",
        "--warmup-epochs",
        "1",
    ]
    full = flag(args, "--checkpoint-dir", str(tmp_path / "full")) + ["--keep-last", "4"]
    run(full)
    resumed = flag(args, "--checkpoint-dir", str(tmp_path / "resumed"))
    run(resumed, "--resume-from", str(tmp_path / "full" / "epoch_2.pth"))
    a, b = load_checkpoint(tmp_path / "full" / "last.pth"), load_checkpoint(tmp_path / "resumed" / "last.pth")
    assert a["epoch"] == b["epoch"] == 4 and a["global_step"] == b["global_step"]
    for key in ("model_state_dict", "ema_state_dict"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    va = [r["val"] for r in history.read(tmp_path / "full" / "metrics.jsonl") if r["type"] == "epoch"][2:]
    vb = [r["val"] for r in history.read(tmp_path / "resumed" / "metrics.jsonl") if r["type"] == "epoch"]
    assert va == vb and len(vb) == 2
    assert sorted(f for f in os.listdir(tmp_path / "full") if f.startswith("epoch_")) == [
        "epoch_1.pth",
        "epoch_2.pth",
        "epoch_3.pth",
        "epoch_4.pth",
    ]


def test_warm_restart_with_new_lr_logs_changes(tiny_args, tmp_path, capsys):
    args = flag(tiny_args, "--epochs", "3")
    run(args)
    first = tmp_path / "run" / "last.pth"
    new = flag(args, "--checkpoint-dir", str(tmp_path / "warm")) + [
        "--stage2-lr",
        "0.00123",
        "--resume-from",
        str(first),
    ]
    run(new)
    out = capsys.readouterr().out
    assert "warm restart" in out and "optim.stage2_lr: None -> 0.00123" in out
    events = history.read(tmp_path / "warm" / "metrics.jsonl")
    assert events[0]["type"] == "warm_restart" and events[0]["epoch"] == 4  # would resume after epoch 3
    # epoch 3 was the last: nothing left to train, but nothing lost either
    assert not [r for r in events if r["type"] == "epoch"]


def test_warm_restart_first_step_uses_new_lr(tiny_args, tmp_path):
    args = flag(tiny_args, "--epochs", "3") + ["--keep-last", "3"]
    run(args)
    warm = flag(args, "--checkpoint-dir", str(tmp_path / "warm")) + [
        "--stage2-lr",
        "0.00123",
        "--resume-from",
        str(tmp_path / "run" / "epoch_1.pth"),
        "--scheduler",
        "constant",
    ]
    run(warm)
    epochs = [r for r in history.read(tmp_path / "warm" / "metrics.jsonl") if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [2, 3] and epochs[0]["lr"] == pytest.approx(0.00123)


def test_skip_stage1_without_and_with_resume(tiny_args, tmp_path):
    run(flag(tiny_args, "--checkpoint-dir", str(tmp_path / "s")), "--skip-stage1")
    recs = history.read(tmp_path / "s" / "metrics.jsonl")
    assert [r["stage"] for r in recs if r["type"] == "epoch"] == [2, 2]
    stage1 = flag(tiny_args, "--epochs", "1")
    run(flag(stage1, "--checkpoint-dir", str(tmp_path / "one")))
    run(
        flag(tiny_args, "--epochs", "3"),
        "--checkpoint-dir",
        str(tmp_path / "two"),
        "--skip-stage1",
        "--resume-from",
        str(tmp_path / "one" / "best_model.pth"),
    )
    recs = [r for r in history.read(tmp_path / "two" / "metrics.jsonl") if r["type"] == "epoch"]
    assert [(r["epoch"], r["stage"]) for r in recs] == [(2, 2), (3, 2)]


def test_checkpoint_contents_and_other_architecture_refused(tiny_args, tmp_path, capsys):
    run(tiny_args, "--use-ema")
    ckpt = torch.load(tmp_path / "run" / "best_model.pth", weights_only=True)
    for key in (
        "model_state_dict",
        "ema_state_dict",
        "raw_model_state_dict",
        "optimizer_state_dict",
        "scaler_state_dict",
        "rng_state",
        "epoch",
        "global_step",
        "stage",
        "best_iou",
        "best_epoch",
        "metrics",
        "config",
    ):
        assert key in ckpt, key
    assert ckpt["weights"] == "ema" and isinstance(ckpt["config"], dict)
    assert os.path.isfile(tmp_path / "run" / "config.yaml")
    other = flag(tiny_args, "--num-experts", "2") + [
        "--resume-from",
        str(tmp_path / "run" / "last.pth"),
        "--checkpoint-dir",
        str(tmp_path / "x"),
    ]
    assert main(["train", *other]) == 2
    err = capsys.readouterr().err
    assert "another architecture: num_experts=3 (this run: 2)" in err and "--init-from" in err
    run(*[("--init-from" if a == "--resume-from" else a) for a in other])
    assert "loaded" in capsys.readouterr().out


def _iou_untrained_and_trained(root, tmp_path):
    from camodet.evaluation.protocol import evaluate
    from camodet.serving.predictor import Predictor

    common = [
        "--dataset-path",
        root,
        "--backbone",
        "edgenext_xx_small",
        "--num-experts",
        "4",
        "--img-size",
        "64",
        "--batch-size",
        "16",
        "--num-workers",
        "0",
        "--lr",
        "0.002",
        "--stage2-lr",
        "0.001",
        "--warmup-epochs",
        "1",
        "--deep-supervision",
        "--seed",
        "0",
    ]
    run(
        common,
        "--checkpoint-dir",
        str(tmp_path / "untrained"),
        "--epochs",
        "1",
        "--stage1-epochs",
        "1",
        "--lr",
        "1e-9",
        "--min-lr",
        "0",
        "--stage2-lr",
        "1e-9",
    )
    run(common, "--checkpoint-dir", str(tmp_path / "trained"), "--epochs", "10", "--stage1-epochs", "3")
    return [
        evaluate(
            Predictor.load(str(tmp_path / r / "best_model.pth")),
            make(EvaluateOptions, dataset_path=[root], num_workers=0),
        )["COD10K"]["IoU"]
        for r in ("untrained", "trained")
    ]


@pytest.mark.slow
def test_small_model_beats_untrained_and_colour_threshold(tmp_path):
    """synth is learnable: about a minute of CPU training beats both an untrained model
    and the best single global colour threshold (chosen on the test set itself)."""
    import numpy as np

    from camodet.data.io import read_image, read_mask
    from camodet.data.layouts import gather
    from camodet.data.synth import write_dataset
    from camodet.evaluation.metrics import iou_dice

    root = str(tmp_path / "COD10K")
    write_dataset(root, train=160, test=30, seed=11, size_range=(64, 112))
    untrained, trained = _iou_untrained_and_trained(root, tmp_path)
    test = [(read_image(s.image).astype(int), read_mask(s.mask) > 127) for s in gather([root], "test")]
    best = 0.0
    for channel in range(4):
        for t in range(16, 256, 16):
            for sign in (1, -1):
                ious = []
                for img, gt in test:
                    v = img.mean(2) if channel == 3 else img[:, :, channel]
                    ious.append(iou_dice(sign * v > sign * t, gt)[0])
                best = max(best, float(np.mean(ious)))
    print(f"IoU untrained {untrained:.3f}, colour threshold {best:.3f}, trained {trained:.3f}")
    assert trained > best + 0.15 and trained > untrained + 0.2


@pytest.mark.slow
def test_reference_workflow_twice(synth_root, tmp_path):
    """The DESIGN.md command verbatim with small sizes: from scratch, then resumed
    from its best_model.pth with --skip-stage1 and changed LRs."""
    ref = (
        "train --dataset-path {data} --checkpoint-dir {out} {resume}"
        "--backbone edgenext_xx_small --num-experts 7 "
        "--batch-size 8 --stage2-batch-size 2 --accumulation-steps 2 "
        "--img-size 64 --epochs {epochs} --stage1-epochs 2 "
        "--lr {lr} --stage2-lr {lr2} --scheduler cosine --min-lr 0.00001 "
        "--warmup-epochs 1 --progressive-unfreeze --deep-supervision "
        "--num-workers 2 --use-ema --ema-decay 0.999"
    )
    first = ref.format(data=synth_root, out=tmp_path / "old", resume="", lr="0.0004", lr2="0.00018", epochs=4)
    second = ref.format(
        data=synth_root,
        out=tmp_path / "batch8",
        lr="0.0003",
        lr2="0.0001",
        epochs=7,
        resume=f"--resume-from {tmp_path / 'old' / 'best_model.pth'} --skip-stage1 ",
    )
    for cmd in (first, second):
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, "train_ultimate.py"), *cmd.split()],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Epoch" in proc.stdout and "IoU:" in proc.stdout
    assert "warm restart" in proc.stdout and "optim.stage2_lr: 0.00018 -> 0.0001" in proc.stdout
    assert "stage 2 from epoch" in proc.stdout and "Epoch 7:" in proc.stdout and "Epoch 1:" not in proc.stdout
    assert load_checkpoint(tmp_path / "batch8" / "last.pth")["epoch"] == 7


@pytest.mark.slow
def test_torchrun_two_processes_gloo(synth_root, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        "-m",
        "camodet",
        "train",
        "--dataset-path",
        synth_root,
        "--checkpoint-dir",
        str(out),
        "--backbone",
        "edgenext_xx_small",
        "--num-experts",
        "3",
        "--img-size",
        "64",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--decoder-channels",
        "16",
        "--epochs",
        "4",
        "--stage1-epochs",
        "1",
        "--progressive-unfreeze",
        "--accumulation-steps",
        "2",
        "--use-ddp",
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all 2 ranks hold identical parameters" in proc.stdout
    # stage 2 = epochs 2..4 with 4 groups: milestones at epochs 3 and 4 (the shallowest waits for 5)
    assert "epoch 3: backbone groups [2, 3] now train" in proc.stdout
    assert "epoch 4: backbone groups [1, 2, 3] now train" in proc.stdout
    epochs = [r for r in history.read(out / "metrics.jsonl") if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]  # rank 0 alone wrote
    assert proc.stdout.count("Epoch 4:") == 1
    n_val = epochs[0]["val"]["images"]
    assert n_val == round(0.1 * 21)  # every validation image exactly once


def test_speed_flags_keep_the_result(tiny_args, tmp_path, monkeypatch, capsys):
    """Gradient checkpointing, channels_last and persistent workers do not change what is
    learned; a failing torch.compile falls back to eager with a message."""
    base = flag(tiny_args, "--num-workers", "1")
    run(flag(base, "--checkpoint-dir", str(tmp_path / "plain")), "--no-persistent-workers")

    def broken_compile(module, *a, **k):
        def fail(*args, **kwargs):
            raise RuntimeError("no C++ compiler found")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    run(
        flag(base, "--checkpoint-dir", str(tmp_path / "fast")),
        "--grad-checkpointing",
        "--channels-last",
        "on",
        "--compile",
    )
    assert (
        "--compile: torch.compile failed (RuntimeError: no C++ compiler found); continuing without it"
        in capsys.readouterr().out
    )
    a, b = weights(tmp_path / "plain" / "last.pth"), weights(tmp_path / "fast" / "last.pth")
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-4, rtol=1e-3), k


def test_training_logs_health_advice_once(tiny_args, tmp_path, capsys):
    # a constant LR that sits at --min-lr: epoch 2 of 3 has stage-2 epochs left at the floor
    run(
        flag(tiny_args, "--epochs", "4"),
        "--scheduler",
        "constant",
        "--lr",
        "0.0001",
        "--min-lr",
        "0.0001",
        "--warmup-epochs",
        "0",
    )
    out = capsys.readouterr().out
    assert out.count("advice (epoch 2): the LR reached --min-lr") == 1
    assert "advice (epoch 3)" not in out  # the same condition is not repeated


def test_train_with_cache(tiny_args, tmp_path):
    run(
        flag(tiny_args, "--epochs", "1"),
        "--stage1-epochs",
        "1",
        "--cache",
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    (folder,) = os.listdir(tmp_path / "cache")
    assert folder.startswith("64px-") and any(
        f.endswith(".image.npy") for f in os.listdir(tmp_path / "cache" / folder)
    )
    epochs = [r for r in history.read(tmp_path / "run" / "metrics.jsonl") if r["type"] == "epoch"]
    assert epochs[0]["val"]["images"] == 2  # validation GT read at original size, all of it


def test_a_bad_validation_image_is_dropped_not_doubled(synth_root, tiny_args, tmp_path):
    import shutil

    from camodet.data.layouts import gather
    from camodet.data.splits import split_train_val

    root = tmp_path / "COD10K-v3"
    shutil.copytree(synth_root, root)
    _, val = split_train_val(gather([str(root)], "train"), 0.5, 1)
    truncate(val[0].image)
    args = flag(flag(tiny_args, "--dataset-path", str(root)), "--epochs", "1")
    assert main(["train", *args, "--val-fraction", "0.5", "--skip-bad-files"]) == 0
    epoch = [r for r in history.read(str(tmp_path / "run" / "metrics.jsonl")) if r["type"] == "epoch"][0]
    assert epoch["val"]["images"] == len(val) - 1


def test_warns_when_stage1_freezes_a_random_backbone(tiny_args, tmp_path, capsys):
    run(flag(tiny_args, "--epochs", "1"))
    assert "randomly initialised" in capsys.readouterr().out
    run(
        flag(flag(tiny_args, "--epochs", "1"), "--checkpoint-dir", str(tmp_path / "b")),
        "--init-from",
        str(tmp_path / "run" / "last.pth"),
    )
    assert "randomly initialised" not in capsys.readouterr().out


def test_every_checkpoint_of_an_ema_run_holds_what_validation_used(tiny_args, tmp_path, monkeypatch):
    """--use-ema --val-fraction 0 writes only last.pth: auto (evaluate, predict, export) and
    --init-from must take its EMA weights, as validation would have."""
    run(flag(tiny_args, "--epochs", "1"), "--use-ema", "--ema-decay", "0.5", "--val-fraction", "0")
    last = tmp_path / "run" / "last.pth"
    assert not (tmp_path / "run" / "best_model.pth").exists()
    ckpt = torch.load(last, weights_only=True)
    ema, raw = ckpt["ema_state_dict"], ckpt["raw_model_state_dict"]
    name = next(k for k in raw if k.startswith("decoder") and k.endswith("weight"))
    assert not torch.equal(ema[name], raw[name])
    assert ckpt["weights"] == "ema" and torch.equal(ckpt["model_state_dict"][name], ema[name])
    assert torch.equal(Predictor.load(str(last), device="cpu").model.state_dict()[name], ema[name])

    import camodet.engine.trainer as trainer

    taken, real = [], trainer.load_matching
    monkeypatch.setattr(trainer, "load_matching", lambda model, sd: taken.append(sd) or real(model, sd))
    one_epoch = flag(tiny_args, "--epochs", "1")
    run(flag(one_epoch, "--checkpoint-dir", str(tmp_path / "next")), "--init-from", str(last))
    assert torch.equal(taken[0][name], ema[name])


class Seen(Hook):
    """A hook given to the trainer: what it was called with, in order (the other points stay no-ops)."""

    def __init__(self):
        self.calls = []

    def before_train(self, trainer):
        self.calls.append(("before_train", trainer.state.epoch))

    def after_epoch(self, trainer, result):
        self.calls.append(("after_epoch", result.epoch, os.path.isfile(trainer.folder.last)))

    def after_train(self, trainer, error):
        self.calls.append(("after_train", error))


class FailsAfterEpoch(Hook):
    def after_epoch(self, trainer, result):
        raise RuntimeError("a hook failed")


def test_hooks_given_at_construction_see_the_run_from_start_to_end(synth_root, tmp_path):
    """Trainer(cfg, hooks=...): each hook is called before training, after each epoch (once the
    trainer's own hooks saved it) and after training, with the error that ended it, if any."""
    seen = Seen()
    state = Trainer(tiny_config(synth_root, tmp_path / "run"), hooks=[seen]).run()
    assert state.epoch == 2 and not state.interrupted
    assert seen.calls == [
        ("before_train", 0),
        ("after_epoch", 1, True),
        ("after_epoch", 2, True),
        ("after_train", None),
    ]
    seen = Seen()
    with pytest.raises(RuntimeError, match="a hook failed"):
        Trainer(tiny_config(synth_root, tmp_path / "failing"), hooks=[seen, FailsAfterEpoch()]).run()
    assert seen.calls[:2] == [("before_train", 0), ("after_epoch", 1, True)] and len(seen.calls) == 3
    point, error = seen.calls[2]
    assert point == "after_train" and str(error) == "a hook failed"
