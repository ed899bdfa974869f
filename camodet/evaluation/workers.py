"""`camodet evaluate --workers N`: the metrics (pysodmetrics at each GT's original size, the CPU
work that dominates an evaluation) in N processes while this one reads images and runs the
model. Results come back in submission order, a bounded number in flight (so a large test set
never queues all its maps in memory), and are added up in that order: the same numbers as one
process. The standard library's process pool does the job; nothing else is needed."""

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from ..config import ConfigError

IN_FLIGHT_PER_WORKER = 4  # enough to keep a worker busy while the model makes the next maps


def _one_thread() -> None:
    # each worker is one core's worth of metric code; OpenCV's own threads would oversubscribe
    import cv2

    cv2.setNumThreads(1)


class MetricWorkers:
    """`map(fn, items)` over (key, args, keep) items: yields (key, fn(*args), keep) in order;
    fn runs in the worker processes (workers > 1) or here (0 or 1). keep stays in this
    process (a map the caller needs afterwards), never pickled."""

    def __init__(self, workers: int = 0):
        if workers < 0:
            raise ConfigError(f"--workers {workers}: give the number of metric processes (0: none)")
        self.workers = workers
        self.pool = None

    def __enter__(self) -> "MetricWorkers":
        if self.workers > 1:
            # spawn: a fork of a process that holds torch's threads (and maybe CUDA) can hang
            self.pool = multiprocessing.get_context("spawn").Pool(self.workers, initializer=_one_thread)
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate() if exc[0] else self.pool.close()
            self.pool.join()
            self.pool = None

    def map(self, fn: Callable, items: Iterable[tuple]) -> Iterator[tuple]:
        if self.pool is None:
            for key, args, keep in items:
                yield key, fn(*args), keep
            return
        pending: deque = deque()
        for key, args, keep in items:
            pending.append((key, self.pool.apply_async(fn, args), keep))
            if len(pending) >= self.workers * IN_FLIGHT_PER_WORKER:
                key0, result, keep0 = pending.popleft()
                yield key0, result.get(), keep0
        while pending:
            key0, result, keep0 = pending.popleft()
            yield key0, result.get(), keep0
