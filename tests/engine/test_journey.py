"""The reference user's whole path in one test: a fresh fp16 run (stage 1, progressive
stage 2, EMA, accumulation) on COD10K + CAMO that meets a NaN and a SIGTERM, then the
seed workflow's warm restart from its best_model.pth with --skip-stage1 and new LRs, cut
by SIGTERM mid-epoch and resumed by the printed command with the weights file gone.
Each resumed run must equal its uninterrupted twin."""

import os
import shlex
import shutil
import signal

import pytest
import torch

import camodet.engine.trainer as trainer
from camodet.cli import main
from camodet.data.synth import write_dataset
from camodet.engine import history
from camodet.engine.checkpoint import load_checkpoint


def camo_tree(root) -> str:
    """CAMO's real shape: Images/Train, Images/Test and one GT/ with both splits' masks."""
    src = str(root) + "-src"
    write_dataset(src, train=10, test=4, seed=11, noncam_every=0, size_range=(64, 112))
    for split in ("Train", "Test"):
        os.makedirs(os.path.join(root, "Images", split))
        for f in sorted(os.listdir(os.path.join(src, split, "Image"))):
            stem = f"camourflage_{split.lower()}_{f.rsplit('-', 1)[1].split('.')[0]}"
            shutil.copy(
                os.path.join(src, split, "Image", f), os.path.join(root, "Images", split, stem + ".jpg")
            )
            os.makedirs(os.path.join(root, "GT"), exist_ok=True)
            shutil.copy(
                os.path.join(src, split, "GT_Object", f.replace(".jpg", ".png")),
                os.path.join(root, "GT", stem + ".png"),
            )
    return str(root)


class Faults:
    """Hooks on the trainer, keyed by (epoch, optimizer step) so that a resumed process meets
    them where the uninterrupted one did: a SIGTERM, NaN weights; and a record of every
    parameter group's LR at every step."""

    def __init__(self, monkeypatch):
        self.lrs, self.sigterm_at, self.nan_at, self.models = {}, None, None, []
        real_set_lrs, real_build = trainer.set_lrs, trainer.build_model

        def set_lrs(optimizer, plan, epoch, step, steps_per_epoch, scale=1.0):
            if (epoch, step) == self.nan_at:
                self.nan_at = None
                with torch.no_grad():
                    next(p for p in self.models[-1].decoder.parameters() if p.requires_grad).fill_(
                        float("nan")
                    )
            if (epoch, step) == self.sigterm_at:
                self.sigterm_at = None
                os.kill(os.getpid(), signal.SIGTERM)  # the trainer finishes this step, saves and stops
            out = real_set_lrs(optimizer, plan, epoch, step, steps_per_epoch, scale)
            self.lrs[(epoch, step)] = [pg["lr"] for pg in optimizer.param_groups]
            return out

        monkeypatch.setattr(trainer, "set_lrs", set_lrs)
        monkeypatch.setattr(
            trainer, "build_model", lambda cfg: self.models.append(real_build(cfg)) or self.models[-1]
        )
        # the fp16 path that --amp auto takes on a P100/T4: CPU fp16 autocast with a real GradScaler
        monkeypatch.setattr(trainer, "amp_dtype", lambda setting, device: torch.float16)

    def run(self, args, nan_at=None, sigterm_at=None) -> int:
        self.lrs, self.nan_at, self.sigterm_at = {}, nan_at, sigterm_at
        return main(["train", *args])


def epochs(run_dir):
    keep = ("epoch", "stage", "global_step", "loss", "lr", "lr_scale", "val", "expert_usage", "skipped_steps")
    return [
        {k: r[k] for k in keep}
        for r in history.read(os.path.join(run_dir, "metrics.jsonl"))
        if r["type"] == "epoch"
    ]


def assert_same_state(a_path, b_path):
    a, b = load_checkpoint(a_path), load_checkpoint(b_path)
    assert (a["epoch"], a["global_step"], a["lr_scale"]) == (b["epoch"], b["global_step"], b["lr_scale"])
    for key in ("model_state_dict", "ema_state_dict"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


def resume_command(err: str) -> list[str]:
    words = shlex.split(err.split("continue exactly with:\n", 1)[1].strip().splitlines()[0])
    return words[words.index("train") + 1 :]


@pytest.mark.slow
def test_reference_user_journey(synth_root, tmp_path, monkeypatch, capsys):
    camo = camo_tree(tmp_path / "CAMO")
    faults = Faults(monkeypatch)
    common = [
        "--dataset-path",
        synth_root,
        camo,
        "--backbone",
        "edgenext_xx_small",
        "--num-experts",
        "3",
        "--img-size",
        "64",
        "--decoder-channels",
        "16",
        "--num-workers",
        "0",
        "--seed",
        "5",
        "--use-ema",
        "--ema-decay",
        "0.9",
        "--accumulation-steps",
        "2",
    ]
    # Run A: stage 1 (1 epoch) + progressive stage 2 (epochs 2-4), batch 4: 28 images, 4 steps an epoch.
    a_args = common + [
        "--batch-size",
        "4",
        "--epochs",
        "4",
        "--stage1-epochs",
        "1",
        "--progressive-unfreeze",
        "--lr",
        "0.001",
    ]
    nan = (2, 1)  # NaN weights in stage 2: rollback, then on
    assert faults.run(a_args + ["--checkpoint-dir", str(tmp_path / "A-full")], nan_at=nan) == 0
    a_lrs = faults.lrs
    capsys.readouterr()
    assert (
        faults.run(a_args + ["--checkpoint-dir", str(tmp_path / "A")], nan_at=nan, sigterm_at=(3, 2)) == 143
    )
    err = capsys.readouterr().err
    assert faults.run(resume_command(err)) == 0
    assert_same_state(tmp_path / "A-full" / "last.pth", tmp_path / "A" / "last.pth")
    assert epochs(tmp_path / "A-full") == epochs(tmp_path / "A")
    (rollback,) = [r for r in history.read(tmp_path / "A" / "metrics.jsonl") if r["type"] == "rollback"]
    assert (rollback["epoch"], rollback["lr_scale"]) == (2, 0.5)
    assert a_lrs[(2, 0)] != a_lrs[(4, 0)]

    # Run B: the seed workflow's warm restart from A's best, stage 2 only, new batch, LRs and warmup,
    # ImageNet weights named by file (never read: every weight comes from the checkpoint).
    import timm

    weights = tmp_path / "edgenext_xx_small.pth"
    torch.save(timm.create_model("edgenext_xx_small", pretrained=False).state_dict(), weights)
    best = str(tmp_path / "A" / "best_model.pth")
    start = load_checkpoint(best)["epoch"] + 1
    b_args = common + [
        "--resume-from",
        best,
        "--skip-stage1",
        "--batch-size",
        "4",
        "--stage2-batch-size",
        "2",
        "--epochs",
        str(start + 2),
        "--stage1-epochs",
        "1",
        "--lr",
        "0.0008",
        "--stage2-lr",
        "0.0005",
        "--warmup-epochs",
        "1",
        "--pretrained-path",
        str(weights),
    ]
    capsys.readouterr()
    assert faults.run(b_args + ["--checkpoint-dir", str(tmp_path / "B-full")]) == 0
    assert "warm restart" in capsys.readouterr().out
    full_lrs = faults.lrs
    assert faults.run(b_args + ["--checkpoint-dir", str(tmp_path / "B")], sigterm_at=(start + 1, 3)) == 143
    cut_lrs, err = faults.lrs, capsys.readouterr().err
    weights.unlink()  # a fresh offline notebook session
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    command = resume_command(err)
    assert command[command.index("--resume-from") + 1] == str(tmp_path / "B" / "last.pth")
    assert faults.run(command) == 0
    out = capsys.readouterr().out
    assert "exactly inside epoch" in out and "warm restart" not in out
    assert {**cut_lrs, **faults.lrs} == full_lrs and len(full_lrs) == 3 * 7  # every step, every group
    assert len(full_lrs[(start, 0)]) > 2  # backbone and decoder groups alike
    assert_same_state(tmp_path / "B-full" / "last.pth", tmp_path / "B" / "last.pth")
    assert epochs(tmp_path / "B-full") == epochs(tmp_path / "B")
    assert [e["epoch"] for e in epochs(tmp_path / "B")] == [start, start + 1, start + 2]
