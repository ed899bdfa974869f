import math

import pytest
import yaml

from camodet.cli import main
from camodet.tune.memory_plan import PROFILES, PlanError, choose, scale_lr

BASE = {"lr": 4e-4, "stage2_lr": 2e-4, "base_batch1": 8, "base_batch2": 4}


def measured(per_image_mb=1000.0, fixed_mb=2000.0):
    """Made-up measurements: stage 2 needs twice the memory per image of stage 1."""
    out = []
    for stage in (1, 2):
        for b in (1, 2, 4, 8, 16):
            out.append(
                {
                    "stage": stage,
                    "batch": b,
                    "peak_mb": fixed_mb + stage * per_image_mb * b,
                    "s_per_step": 0.1 * b * stage,
                    "memory": "cuda_allocated",
                }
            )
    return out


def test_largest_micro_batch_under_budget_and_margin():
    # 16 GB budget, 15% margin -> 13926 MB usable: stage 2 fits batch 4 (10000 MB), not 8 (18000 MB)
    accum, (s1, s2) = choose(measured(), 16384, PROFILES["balanced"], 16, BASE, "linear", 1000)
    assert (s2.micro_batch, accum, s2.effective_batch) == (4, 4, 16)
    assert (s1.micro_batch, s1.effective_batch) == (4, 16)  # 4 x 4 reaches the target
    assert s2.peak_mb == 10000 and s2.minutes_per_epoch == pytest.approx(250 * 0.8 / 60)
    # the conservative profile keeps 30% free -> 11469 MB: still 4; a 12 GB card -> stage 2 at 2
    accum, (_, s2) = choose(measured(), 12288, PROFILES["conservative"], 16, BASE, "linear", 1000)
    assert (s2.micro_batch, accum) == (2, 8)


def test_lr_rules():
    assert scale_lr(4e-4, 16, 8, "linear") == pytest.approx(8e-4)
    assert scale_lr(4e-4, 16, 8, "sqrt") == pytest.approx(4e-4 * math.sqrt(2))
    _, (s1, s2) = choose(measured(), 16384, 0.15, 16, BASE, "linear", 1000)
    assert s1.lr == pytest.approx(8e-4) and s2.lr == pytest.approx(8e-4)  # 16/8 x 4e-4 and 16/4 x 2e-4
    _, (s1, s2) = choose(measured(), 16384, 0.15, 16, BASE, "sqrt", 1000)
    assert s2.lr == pytest.approx(4e-4)


def test_nothing_fits_says_what_to_do():
    with pytest.raises(PlanError, match="stage 2: nothing fits .*--grad-checkpointing"):
        choose(measured(), 4000, 0.15, 16, BASE, "linear", 1000)  # stage 1 fits batch 1, stage 2 nothing


def test_failed_measurements_are_skipped():
    m = [r for r in measured() if not (r["stage"] == 2 and r["batch"] == 4)] + [
        {"stage": 2, "batch": 4, "error": "CUDA out of memory"}
    ]
    accum, (_, s2) = choose(m, 16384, 0.15, 16, BASE, "linear", 1000)
    assert s2.micro_batch == 2 and accum == 8


@pytest.mark.slow
def test_plan_on_cpu_writes_yamls_that_train(tiny_args, tmp_path, capsys):
    args = [a for a in tiny_args]
    assert (
        main(
            [
                "plan",
                *args,
                "--gpu-memory",
                "64GB",
                "--candidates",
                "2",
                "4",
                "--steps",
                "1",
                "--effective-batch",
                "8",
                "--out-dir",
                str(tmp_path / "plans"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "process peak RSS on the CPU" in out and "min/epoch" in out
    for profile in PROFILES:
        cfg = yaml.safe_load(open(tmp_path / "plans" / f"plan-{profile}.yaml"))
        assert cfg["optim"]["batch_size"] == 4 and cfg["optim"]["accumulation_steps"] == 2
    assert (
        main(
            [
                "train",
                "--config",
                str(tmp_path / "plans" / "plan-fast.yaml"),
                "--checkpoint-dir",
                str(tmp_path / "run"),
                "--epochs",
                "1",
                "--stage1-epochs",
                "1",
            ]
        )
        == 0
    )


def test_plan_measures_with_the_runs_own_speed_settings(tiny_args, tmp_path, monkeypatch):
    from camodet.engine import measure

    specs = []

    def fake(timeout=None, **spec):  # the measuring subprocess, replaced by made-up numbers
        specs.append(spec)
        return {
            "stage": spec["stage"],
            "batch": spec["batch"],
            "s_per_step": 0.1,
            "peak_mb": 100.0 * spec["batch"],
            "memory": "cpu_rss",
        }

    monkeypatch.setattr(measure, "measure_in_subprocess", fake)
    assert (
        main(
            [
                "plan",
                *tiny_args,
                "--amp",
                "fp16",
                "--channels-last",
                "on",
                "--compile",
                "--grad-checkpointing",
                "--gpu-memory",
                "64GB",
                "--candidates",
                "2",
                "4",
                "--out-dir",
                str(tmp_path / "plans"),
            ]
        )
        == 0
    )
    assert [(s["stage"], s["batch"]) for s in specs] == [(1, 2), (1, 4), (2, 2), (2, 4)]
    assert all(
        (s["amp"], s["channels_last"], s["compile"], s["grad_checkpointing"], s["img_size"])
        == ("fp16", "on", True, True, 64)
        for s in specs
    )
