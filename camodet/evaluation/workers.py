"""`camodet evaluate --workers N`: the metrics (pysodmetrics at each GT's original size, the CPU
work that dominates an evaluation) in N processes while this one reads images and runs the
model. Results come back in submission order, a bounded number in flight (so a large test set
never queues all its maps in memory), and are added up in that order: the same numbers as one
process.

The workers are processes of our own, each with a pipe for its tasks and one for its results,
rather than a multiprocessing.Pool: a Pool replaces a worker that dies (the out-of-memory killer,
kill -9) and loses its task, whose result then never comes, so evaluate waited forever; and
concurrent.futures' pool notices the death (BrokenProcessPool) but cannot say which worker it
was or what ended it. Here this process waits on every worker's results and on the worker
itself at once: a death ends the command at once, in one line that names the worker, its pid
and the signal."""

import multiprocessing
import queue
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import wait

from ..errors import ConfigError
from ..launch import ProcessFailure, exit_status

IN_FLIGHT_PER_WORKER = 4  # enough to keep a worker busy while the model makes the next maps
RERUN = "--workers 0 scores in this process and shows the whole traceback"


def _one_thread() -> None:
    # each worker is one core's worth of metric code; OpenCV's own threads would oversubscribe
    import cv2

    cv2.setNumThreads(1)


def _serve(tasks, results) -> None:
    """A worker's life: (seq, fn, args) in, (seq, ok, fn(*args) or the error) out, in order.
    A thread takes the tasks off the pipe as they come, so that handing one over never waits
    for the task before it (two full pipes would otherwise wait on each other)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: evaluate decides
    _one_thread()
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_take_tasks, args=(tasks, inbox), daemon=True).start()
    while (task := inbox.get()) is not None:
        seq, fn, args = task
        try:
            results.send((seq, True, fn(*args)))
        except Exception as e:
            results.send((seq, False, _portable(e)))


def _take_tasks(tasks, inbox: queue.SimpleQueue) -> None:
    try:
        while True:
            inbox.put(tasks.recv())
    except (EOFError, OSError):  # evaluate has gone
        inbox.put(None)


def _portable(e: Exception):
    """What goes back for a task that raised: camodet's own errors as themselves (their message
    names the file and the fix), anything else as its one line."""
    if type(e).__module__.startswith("camodet."):
        return e
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


class _Worker:
    """One metric process, its two pipes, and the tasks (by number) it holds."""

    def __init__(self, ctx, number: int):
        self.number = number
        task_reader, self.tasks = ctx.Pipe(duplex=False)
        self.results, result_writer = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=_serve, args=(task_reader, result_writer), name=f"camodet-metrics-{number}", daemon=True
        )
        self.process.start()
        # Only the worker holds these ends now: its death reads as the end of its result pipe.
        task_reader.close()
        result_writer.close()
        self.holds: set[int] = set()

    def give(self, seq: int, fn: Callable, args: tuple) -> None:
        try:
            self.tasks.send((seq, fn, args))
        except OSError:  # a broken pipe: the worker has gone
            raise self.died() from None
        self.holds.add(seq)

    def receive(self) -> tuple:
        try:
            seq, ok, value = self.results.recv()
        except (EOFError, OSError):
            raise self.died() from None
        self.holds.discard(seq)
        if ok:
            return seq, value
        if isinstance(value, Exception):
            raise value
        raise ProcessFailure(f"{self.name} failed: {value}; {RERUN}")

    @property
    def name(self) -> str:
        return f"metric worker {self.number} (pid {self.process.pid})"

    def died(self) -> ProcessFailure:
        self.process.join(5)  # its exit status, once the system has it
        how = exit_status(self.process.exitcode)
        return ProcessFailure(
            f"{self.name} {how} while scoring; the out-of-memory killer ends processes so: run fewer "
            f"--workers (each holds its maps and the metrics' buffers), or give the machine more memory"
            if self.process.exitcode == -signal.SIGKILL
            else f"{self.name} {how} while scoring; {RERUN}"
        )

    def stop(self, now: bool) -> None:
        if not now:
            try:
                self.tasks.send(None)
            except OSError:
                pass
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.tasks.close()
        self.results.close()


class MetricWorkers:
    """`map(fn, items)` over (key, args, keep) items: yields (key, fn(*args), keep) in order;
    fn runs in the worker processes (workers > 1) or here (0 or 1). keep stays in this
    process (a map the caller needs afterwards), never pickled. A worker that dies or whose
    task raises ends the map with one line (ProcessFailure, or camodet's own error as it was)."""

    def __init__(self, workers: int = 0):
        if workers < 0:
            raise ConfigError(f"--workers {workers}: give the number of metric processes (0: none)")
        self.workers = workers
        self.pool: list[_Worker] = []

    def __enter__(self) -> "MetricWorkers":
        if self.workers > 1:
            # spawn: a fork of a process that holds torch's threads (and maybe CUDA) can hang
            ctx = multiprocessing.get_context("spawn")
            self.pool = [_Worker(ctx, number) for number in range(1, self.workers + 1)]
        return self

    def __exit__(self, *exc) -> None:
        for worker in self.pool:
            worker.stop(now=exc[0] is not None)
        self.pool = []

    def map(self, fn: Callable, items: Iterable[tuple]) -> Iterator[tuple]:
        if not self.pool:
            for key, args, keep in items:
                yield key, fn(*args), keep
            return
        pending: deque = deque()  # (seq, key, keep) in submission order
        done: dict = {}  # seq -> result, of those that came back before their turn
        for seq, (key, args, keep) in enumerate(items):
            min(self.pool, key=lambda w: len(w.holds)).give(seq, fn, args)
            pending.append((seq, key, keep))
            if len(pending) >= len(self.pool) * IN_FLIGHT_PER_WORKER:
                yield self._first(pending, done)
        while pending:
            yield self._first(pending, done)

    def _first(self, pending: deque, done: dict) -> tuple:
        """The oldest pending item with its result, waiting for whatever comes (a result, or a
        worker's end) until it is there."""
        seq, key, keep = pending.popleft()
        while seq not in done:
            ready = set(wait([w.results for w in self.pool] + [w.process.sentinel for w in self.pool]))
            for worker in self.pool:
                if worker.results in ready:  # results it sent before it died still count
                    got, value = worker.receive()
                    done[got] = value
                elif worker.process.sentinel in ready:
                    raise worker.died()
        return key, done.pop(seq), keep
