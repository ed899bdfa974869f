"""The loop's clock (data waits vs step compute) and what --num-workers auto resolves to."""

import pytest

from camodet.config import TrainConfig, merge, validate
from camodet.engine.timing import LoopClock
from camodet.errors import ConfigError
from camodet.launch import resolve_workers


class FakeTime:
    """A clock that moves only when the test sleeps: timings exact whatever the machine's load."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_loop_clock_separates_data_waits_from_steps():
    time = FakeTime()

    def slow_batches():
        for i in range(4):
            time.sleep(0.02)  # the loader
            yield i

    clock = LoopClock(clock=time)
    for i in clock.wrap(slow_batches()):
        time.sleep(0.01)  # the step's compute
        if i % 2 == 1:  # accumulation 2: an optimizer step every second batch
            clock.step()
    s = clock.summary()
    assert s["steps"] == 2
    assert 0.018 <= s["step_time_s"] < 0.04  # two micro-batches of compute, no waits
    assert 0.075 <= s["data_wait_s"] < 0.15
    assert s["train_time_s"] >= s["data_wait_s"] + 2 * s["step_time_s"]
    assert s["loop_ratio"] == pytest.approx(s["train_time_s"] / (2 * s["step_time_s"]), rel=0.01)
    assert s["loop_ratio"] > 2  # the waits show up in the ratio


def test_loop_clock_without_steps():
    s = LoopClock().summary()
    assert s["steps"] == 0 and s["loop_ratio"] is None


@pytest.mark.parametrize(
    "device,cores,expected",
    [
        ("cpu", 1, 0),
        ("cpu", 2, 0),
        ("cpu", 4, 0),
        ("cpu", 8, 1),
        ("cpu", 32, 4),
        ("cuda", 1, 1),
        ("cuda", 2, 1),
        ("cuda", 4, 3),
        ("cuda", 16, 15),
        ("cuda", 64, 16),
    ],
)
def test_auto_workers(device, cores, expected):
    assert resolve_workers("auto", device, cores) == expected


def test_explicit_workers_are_kept_and_auto_is_the_default(monkeypatch):
    assert resolve_workers(3, "cpu", 2) == 3 and resolve_workers(0, "cuda", 16) == 0
    cfg = TrainConfig()
    assert cfg.data.num_workers == "auto"
    assert merge(cfg, {"data": {"num_workers": "2"}}, "test").data.num_workers == 2
    assert merge(cfg, {"num_workers": "AUTO"}, "test").data.num_workers == "auto"
    with pytest.raises(ConfigError, match="--num-workers"):
        merge(cfg, {"num_workers": "many"}, "test")
    cfg.data.num_workers = -1
    with pytest.raises(ConfigError, match="--num-workers must be >= 0 or auto"):
        validate(cfg, check_paths=False)


def test_auto_workers_share_the_cores_among_local_processes(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    from camodet import launch

    monkeypatch.setattr(launch.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert resolve_workers("auto", "cuda") == 3  # 16 cores / 4 processes, less the main one
