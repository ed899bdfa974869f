from camodet.engine.health import advise

CONFIG = {"stages": {"epochs": 20, "stage1_epochs": 5, "skip_stage1": False}, "optim": {"min_lr": 1e-5}}


def epoch(e, iou=0.5, loss=1.0, grad=1.0, usage=((0.3, 0.3, 0.4),), lr=1e-4):
    return {
        "type": "epoch",
        "epoch": e,
        "stage": 1 if e <= CONFIG["stages"]["stage1_epochs"] else 2,
        "loss": loss,
        "grad_norm": grad,
        "lr": lr,
        "val": {"IoU": iou},
        "expert_usage": [list(u) for u in usage],
    }


def healthy(n=12):
    return [epoch(e, iou=0.3 + 0.02 * e, loss=1.5 - 0.05 * e, grad=2.0 - 0.05 * e) for e in range(1, n + 1)]


def rules(records):
    return [a.rule for a in advise(records, CONFIG)]


def test_healthy_run_is_silent():
    run = healthy()
    for i in range(1, len(run) + 1):
        assert rules(run[:i]) == []


def test_iou_falling_three_epochs():
    run = healthy(8) + [epoch(9, iou=0.40), epoch(10, iou=0.38), epoch(11, iou=0.35)]
    (a,) = advise(run, CONFIG)
    assert a.rule == "iou_falling" and "--stage2-lr 20% lower" in a.message and a.epoch == 11
    assert rules(run[:-1]) == []  # two falls are not yet a trend


def test_loss_spike():
    run = healthy(8) + [epoch(9, loss=2.0)]
    assert rules(run) == ["loss_spike"] and "x the best" in advise(run, CONFIG)[0].message


def test_rising_gradient_norm():
    run = healthy(8) + [epoch(9, grad=2.0), epoch(10, grad=3.0), epoch(11, grad=4.0)]
    assert "grad_norm_rising" in rules(run)
    assert "grad_norm_rising" not in rules(
        healthy(8) + [epoch(9, grad=1.7), epoch(10, grad=1.8), epoch(11, grad=1.9)]
    )


def test_unused_expert():
    run = healthy(3) + [epoch(4, usage=[(0.5, 0.5, 0.0), (0.3, 0.3, 0.4)])]
    (a,) = advise(run, CONFIG)
    assert (
        a.rule == "expert_unused"
        and "block 0: expert(s) [2]" in a.message
        and "--moe-loss-weight" in a.message
    )


def test_lr_at_floor_with_epochs_left():
    assert rules(healthy(7) + [epoch(8, lr=1e-5)]) == ["lr_at_floor"]
    assert rules(healthy(4) + [epoch(5, lr=1e-5)]) == []  # end of stage 1: expected
    assert rules(healthy(19) + [epoch(20, lr=1e-5, loss=0.5, iou=0.8)]) == []  # last epoch


def test_persisting_condition_is_reported_once():
    from camodet.engine.health import new_advice

    starved = [(0.5, 0.5, 0.0)]
    run = healthy(3) + [epoch(4, usage=starved), epoch(5, usage=starved)]
    assert [a.rule for a in new_advice(run[:4], CONFIG)] == ["expert_unused"]
    assert new_advice(run, CONFIG) == []
    assert [
        a.rule for a in new_advice(run + [epoch(6, usage=[(0.5, 0.5, 0.0), (0.0, 0.5, 0.5)])], CONFIG)
    ] == ["expert_unused"]  # block 1 is news


def test_gradient_norm_compared_only_since_the_last_unfreeze():
    rising = [epoch(9, grad=2.0), epoch(10, grad=3.0), epoch(11, grad=4.0)]
    unfreeze = {"type": "unfreeze", "epoch": 9, "trainable": [2, 3]}
    assert "grad_norm_rising" not in rules(healthy(8) + [unfreeze] + rising)
    assert "grad_norm_rising" in rules(healthy(8) + rising)
