"""The LR range test: its suggestion rules on a known curve, and a real test from a checkpoint that
leaves the checkpoint and its run folder exactly as they were."""

import hashlib
import math
import os

import pytest
import yaml

from camodet.cli import main
from camodet.tune.lr_range import RangeResult, describe, exponential_lrs, smooth, suggest


def test_suggestions_on_a_known_curve():
    lrs = exponential_lrs(1e-6, 1.0, 61)  # ten points per decade
    # flat, then falling fastest at 1e-3 (a logistic step in log10 LR), then climbing from 1e-1
    losses = [
        1.0 - 0.6 / (1 + math.exp(-4 * (math.log10(lr) + 3))) + (5 * (lr - 0.1) if lr > 0.1 else 0)
        for lr in lrs
    ]
    steepest, minimum, edge = suggest(lrs, losses, losses)
    assert steepest == pytest.approx(1e-3, rel=0.3)
    assert minimum == pytest.approx(0.1, rel=0.3)
    assert edge is None  # the loss falls by 60%: the steepest descent is the suggestion
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # bias-corrected from the first step


def test_a_curve_with_no_descent_suggests_the_edge_before_the_climb_not_a_noise_wiggle():
    """Weights already trained for the stage: the loss is flat in batch noise, then climbs from
    about 3e-3 (the shape measured on CAMO from a stage-1 checkpoint), where the steepest "descent"
    is a wiggle of the noise or the fading of one wild batch: the suggestion is where the climb
    starts."""
    lrs = exponential_lrs(1e-7, 1.0, 71)
    noise = [0.05 * math.sin(7 * i) for i in range(len(lrs))]  # batch to batch, a dip early on
    climb = [0.3 * math.log10(lr / 3e-3) if lr > 3e-3 else 0.0 for lr in lrs]
    losses = [1.0 + n + c for n, c in zip(noise, climb)]
    losses[40] = 3.0  # one wild batch on the flat part moves the average, not the median
    steepest, minimum, edge = suggest(lrs, smooth(losses), losses)
    assert 2e-3 <= edge <= 6e-3  # where the climb starts
    result = RangeResult(2, 3, lrs, losses, smooth(losses), steepest, minimum, edge, None, 1.0)
    assert result.suggested == edge and result.to_dict()["suggested"] == edge
    said = describe(result).splitlines()
    assert "never falls 10% below where it started" in said[1] and "is noise" in said[1]
    assert said[2].endswith(f"{edge:.3g}  <- suggested --stage2-lr")


def fingerprint(folder) -> dict:
    """Every file of the folder with its bytes' hash and modification time."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(root, f)
            out[os.path.relpath(path, folder)] = (
                hashlib.sha256(open(path, "rb").read()).hexdigest(),
                os.stat(path).st_mtime_ns,
            )
    return out


@pytest.mark.slow
def test_range_test_from_a_checkpoint_suggests_a_tried_lr_and_changes_nothing(
    tiny_checkpoint, synth_root, tmp_path, capsys
):
    run = tiny_checkpoint.parent
    before = fingerprint(run)
    out = tmp_path / "lr"
    args = ["--dataset-path", synth_root, "--checkpoint-dir", str(run), "--resume-from", str(tiny_checkpoint)]
    args += ["--backbone", "edgenext_xx_small", "--num-experts", "2", "--decoder-channels", "16"]
    args += ["--img-size", "64", "--batch-size", "4", "--accumulation-steps", "2", "--num-workers", "0"]
    args += ["--epochs", "2", "--stage1-epochs", "1", "--use-ema"]
    assert (
        main(
            ["tune", "lr", *args, "--steps", "12", "--start-lr", "1e-5", "--end-lr", "10", "--out", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert fingerprint(run) == before  # checkpoint bytes, every other file and their times: untouched
    curve = yaml.safe_load(open(out / "lr_range.json"))
    assert curve["stage"] == 2 and curve["epoch"] == 2  # the stage the run would train next
    assert 1e-5 <= curve["suggested"] <= 10 and curve["suggested"] in curve["lrs"]
    assert len(curve["lrs"]) == len(curve["losses"]) <= 12
    assert os.path.getsize(out / "lr_range.png") > 1000
    suggested = yaml.safe_load(open(out / "lr_range.yaml"))["optim"]["stage2_lr"]
    assert suggested == pytest.approx(curve["suggested"], rel=1e-2)
    assert "suggested --stage2-lr" in printed and f"--stage2-lr {suggested:g}" in printed


class ScratchTrainer:
    """What range_test asks of the trainer before the LR sweep: the stage the run trains next."""

    def __init__(self, cfg):
        self.first_epoch, self.stage, self.plan = 1, 1, type("Plan", (), {"epochs": 2})()

    def before_train(self):
        pass

    def enter_stage(self, epoch):
        pass


def range_test_on(curve, monkeypatch, steps=40):
    """range_test with the sweep's losses given by `curve(lrs)` (the trainer's steps left out)."""
    from camodet.config import TrainConfig
    from camodet.tune import lr_range

    monkeypatch.setattr("camodet.engine.trainer.Trainer", ScratchTrainer)
    monkeypatch.setattr(lr_range, "sweep_lrs", lambda trainer, lrs, on_step: (lrs, curve(lrs)))
    return lr_range.range_test(TrainConfig(), steps, 1e-6, 1.0)


def test_a_loss_that_diverges_on_the_last_step_is_reported_as_diverged(monkeypatch):
    # falling, then the very last step's loss explodes: the sweep stops there with every step tried
    result = range_test_on(lambda lrs: [1.0 - 0.01 * i for i in range(len(lrs) - 1)] + [1e3], monkeypatch)
    assert len(result.lrs) == 40 and result.diverged_at == result.lrs[-1]
    said = describe(result)
    assert f"the loss diverged at LR {result.lrs[-1]:.3g}" in said and "did not diverge" not in said


def test_a_flat_curve_that_never_climbs_says_the_range_was_too_short(monkeypatch):
    """Weights already trained for the stage, and an --end-lr below where the loss starts to climb:
    the range's end is no edge, and the message says to raise --end-lr."""
    result = range_test_on(lambda lrs: [1.0 + 0.02 * math.sin(7 * i) for i in range(len(lrs))], monkeypatch)
    assert result.diverged_at is None and result.edge == result.lrs[-1]
    assert result.suggested == result.lrs[-1] and "end of the range" in result.rule
    said = describe(result)
    assert "never climbs" in said and "the range is too short" in said and "raise --end-lr" in said
    assert "last LR before the loss" not in said
