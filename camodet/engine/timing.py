"""Where a training pass's time goes: waiting for the data loader, and computing steps.

Host clock only, no device sync of its own: on the CPU a step's work is done when its
Python returns; on a GPU the step's one host read (the guard's numbers) waits for the
step's kernels, so the time up to the next optimizer step's end is that step's. The
epoch record compares the pass with steps x the median step: the difference is what the
loop adds (waiting for data, the first step's warm-up, logging)."""

import statistics
import time


class LoopClock:
    """Splits a training pass's time into waiting for data and computing, per step."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock  # seconds, monotonic; a test passes its own
        self.start = self._mark = clock()
        # Process CPU time (all threads): on a shared machine it does not grow when other work
        # takes the cores, so it measures what a pass cost where wall time cannot.
        self.cpu_start = time.process_time()
        self.data_wait = 0.0
        self._wait_since_mark = 0.0
        self.step_seconds: list[float] = []

    def wrap(self, batches):
        """Yield from `batches`, timing how long each one took to arrive."""
        it = iter(batches)
        while True:
            t = self.clock()
            try:
                batch = next(it)
            except StopIteration:
                return
            waited = self.clock() - t
            self.data_wait += waited
            self._wait_since_mark += waited
            yield batch

    def step(self) -> None:
        """An optimizer step ended: its compute is the time since the last one, less data waits."""
        now = self.clock()
        self.step_seconds.append(now - self._mark - self._wait_since_mark)
        self._mark, self._wait_since_mark = now, 0.0

    def summary(self) -> dict:
        """Epoch-record fields: the pass, its steps, the median step, and the pass's ratio to
        steps x median step (1.0 = the loop costs nothing beyond its steps)."""
        total = self.clock() - self.start
        n = len(self.step_seconds)
        step = statistics.median(self.step_seconds) if n else float("nan")
        return {
            "train_time_s": round(total, 3),
            "steps": n,
            "step_time_s": round(step, 4),
            "data_wait_s": round(self.data_wait, 3),
            "train_cpu_s": round(time.process_time() - self.cpu_start, 3),
            "loop_ratio": round(total / (n * step), 3) if n and step > 0 else None,
        }
