import math

from camodet.engine.guard import MIN_HISTORY, OVERFLOW, ROLLBACK, SKIP, STEP, WINDOW, DivergenceGuard

NAN, INF = math.nan, math.inf


def feed(guard, losses, start=0):
    return [guard.observe(start + i, loss, 1.0, 10.0, fp16=False).action for i, loss in enumerate(losses)]


def test_healthy_run_only_steps():
    g = DivergenceGuard()
    assert set(feed(g, [1.0 - i * 0.001 for i in range(300)])) == {STEP}


def test_fp16_overflow_is_counted_not_an_error():
    g = DivergenceGuard(max_nonfinite_steps=2)
    actions = [g.observe(i, 0.5, INF, 10.0, fp16=True).action for i in range(10)]
    assert actions == [OVERFLOW] * 10 and g.counts["overflow"] == 10 and g.counts["nonfinite"] == 0
    # in bf16/fp32 the same gradient is a non-finite step
    assert g.observe(11, 0.5, INF, 10.0, fp16=False).action == SKIP


def test_nonfinite_loss_skips_then_repeated_ones_roll_back():
    g = DivergenceGuard(max_nonfinite_steps=3)
    assert g.observe(0, NAN, 1.0, 10.0, fp16=False).action == SKIP
    assert g.observe(1, NAN, NAN, 10.0, fp16=True).action == SKIP  # a NaN loss is not an fp16 overflow
    v = g.observe(5, INF, 1.0, 10.0, fp16=False)
    assert v.action == ROLLBACK and "3 non-finite steps" in v.reason


def test_nonfinite_steps_far_apart_do_not_roll_back():
    g = DivergenceGuard(max_nonfinite_steps=2)
    assert g.observe(0, NAN, 1.0, 10.0, False).action == SKIP
    assert g.observe(WINDOW, NAN, 1.0, 10.0, False).action == SKIP
    g.after_rollback()
    assert not g.recent_nonfinite


def test_nonfinite_weights_roll_back_at_once():
    v = DivergenceGuard().observe(0, 0.5, 1.0, NAN, fp16=False)
    assert v.action == ROLLBACK and "weights" in v.reason


def test_loss_spike_is_skipped_once_and_rolls_back_only_when_it_persists():
    g = DivergenceGuard(spike_factor=10)
    assert feed(g, [50.0]) == [STEP]  # no history yet: nothing to compare with
    g = DivergenceGuard(spike_factor=10)
    feed(g, [1.0] * MIN_HISTORY)
    assert feed(g, [9.0], MIN_HISTORY) == [STEP]  # high but within the factor
    v = g.observe(MIN_HISTORY + 1, 12.0, 1.0, 10.0, False)
    assert v.action == SKIP and "12x the running median" in v.reason.replace(".0x", "x")  # one bad batch
    assert feed(g, [1.1], MIN_HISTORY + 2) == [STEP]  # the next window is fine: the run goes on
    assert feed(g, [30.0, 40.0], MIN_HISTORY + 3) == [SKIP, ROLLBACK]  # a spike that stays is not the data
    g.after_rollback()
    assert feed(g, [30.0], MIN_HISTORY + 5) == [SKIP]  # after a rollback a spike is first skipped again
    assert 1000.0 not in g.losses and 30.0 not in g.losses  # spikes never enter the running median
    g = DivergenceGuard(spike_factor=0)
    feed(g, [1.0] * MIN_HISTORY)
    assert feed(g, [1000.0]) == [STEP]  # 0 turns the spike rule off
