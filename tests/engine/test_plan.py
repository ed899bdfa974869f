import math

import pytest

from camodet.config import TrainConfig
from camodet.engine.plan import make_plan, schedule_lr


def cfg(**kw):
    c = TrainConfig()
    c.stages.epochs, c.stages.stage1_epochs = kw.pop("epochs", 11), kw.pop("stage1_epochs", 3)
    c.stages.progressive_unfreeze = kw.pop("progressive", True)
    c.stages.skip_stage1 = kw.pop("skip", False)
    c.stages.unfreeze_warmup_epochs = kw.pop("unfreeze_warmup", 1.0)
    c.optim.lr, c.optim.stage2_lr, c.optim.min_lr = 1e-3, kw.pop("stage2_lr", 5e-4), 1e-5
    c.optim.warmup_epochs = kw.pop("warmup", 1.0)
    c.optim.scheduler = kw.pop("scheduler", "cosine")
    c.optim.backbone_lr_mult = 0.1
    assert not kw
    return c


def test_stage_boundaries():
    p = make_plan(cfg(), num_groups=4)
    assert [p.stage(e) for e in (1, 3, 4, 11)] == [1, 1, 2, 2]
    assert p.span(1) == (1, 3) and p.span(2) == (4, 11)
    skip = make_plan(cfg(skip=True), 4)
    assert skip.stage(1) == 2 and skip.span(2) == (1, 11)


def test_progressive_unfreeze_milestones():
    p = make_plan(cfg(), num_groups=4)  # stage 2 = epochs 4..11, 8 epochs
    assert [p.unfreeze_epoch(g) for g in (3, 2, 1, 0)] == [4, 6, 8, 10]
    assert p.frozen_groups(3) == {0, 1, 2, 3}
    assert p.frozen_groups(4) == {0, 1, 2} and p.frozen_groups(5) == {0, 1, 2}
    assert p.frozen_groups(6) == {0, 1} and p.frozen_groups(10) == set() and p.frozen_groups(11) == set()
    # monotone: a later epoch never has fewer trainable groups (a resume cannot miss one)
    assert all(p.frozen_groups(e + 1) <= p.frozen_groups(e) for e in range(1, 11))
    plain = make_plan(cfg(progressive=False), 4)
    assert plain.frozen_groups(3) == {0, 1, 2, 3} and plain.frozen_groups(4) == set()


def test_schedule_boundaries():
    spe = 10
    p = make_plan(cfg(), 4)
    assert p.stage_lr(1, 0, spe) == pytest.approx(1e-3 / 10)  # first warmup step
    assert p.stage_lr(1, 9, spe) == pytest.approx(1e-3)  # warmup reaches the peak
    assert p.stage_lr(3, 9, spe) == pytest.approx(1e-5)  # last step of stage 1: min_lr
    assert p.stage_lr(4, 0, spe) == pytest.approx(5e-4 / 10)  # stage 2 warms up again
    assert p.stage_lr(4, 9, spe) == pytest.approx(5e-4)
    assert p.stage_lr(11, 9, spe) == pytest.approx(1e-5)  # last step of the run
    lrs = [p.stage_lr(e, s, spe) for e in range(5, 12) for s in range(spe)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # cosine decays monotonically
    assert schedule_lr(5, 11, 0, 1.0, 0.0, "cosine") == pytest.approx(0.5)  # midpoint
    assert schedule_lr(7, 11, 0, 1.0, 0.0, "constant") == 1.0
    assert [schedule_lr(t, 9, 0, 1.0, 0.0, "step") for t in (3, 4, 6, 8)] == pytest.approx(
        [1, 0.1, 0.01, 0.01]
    )
    assert schedule_lr(0, 1, 5, 1.0, 0.0, "cosine") == 1.0  # warmup longer than the stage


def test_backbone_group_lr_ramps_after_unfreeze():
    spe = 4
    p = make_plan(cfg(warmup=0.0), 4)
    assert p.group_lr(None, 6, 0, spe) == pytest.approx(p.stage_lr(6, 0, spe))
    assert p.group_lr(2, 6, 0, spe) == pytest.approx(p.stage_lr(6, 0, spe) * 0.1 / 4)  # just unfrozen
    assert p.group_lr(2, 6, 3, spe) == pytest.approx(p.stage_lr(6, 3, spe) * 0.1)  # ramp done
    assert p.group_lr(3, 6, 0, spe) == pytest.approx(p.stage_lr(6, 0, spe) * 0.1)  # old group


def test_warm_restart_replans_current_stage():
    spe = 5
    p = make_plan(cfg(warmup=0.0, stage2_lr=2e-4), 4, restart_epoch=8)
    assert p.schedule_start == (1, 8)
    assert p.stage_lr(8, 0, spe) == pytest.approx(2e-4)  # new LR from the first step
    assert p.stage_lr(11, 4, spe) == pytest.approx(1e-5)  # still ends at min_lr
    assert p.frozen_groups(8) == make_plan(cfg(), 4).frozen_groups(8)  # unfreeze follows the real stage


def test_pure_function_of_position():
    a, b = make_plan(cfg(), 4), make_plan(cfg(), 4)
    assert a == b
    assert all(
        math.isclose(a.group_lr(g, e, s, 7), b.group_lr(g, e, s, 7))
        for g in (None, 0, 3)
        for e in range(1, 12)
        for s in range(7)
    )


def test_setting_added_after_a_checkpoint_is_no_change_at_its_default():
    """A checkpoint written before model.backbone_norm existed resumes exactly at the default
    (what it was trained with); a run that asks for another value is a warm restart."""
    from camodet.engine.trainer import changed_settings

    saved = TrainConfig().to_dict()
    del saved["model"]["backbone_norm"]
    assert changed_settings(saved, TrainConfig().to_dict()) == []
    other = TrainConfig()
    other.model.backbone_norm = "frozen"
    assert changed_settings(saved, other.to_dict()) == ["model.backbone_norm: None -> 'frozen'"]
