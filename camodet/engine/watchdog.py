"""Stall watchdog: a thread that stops a run in which no optimizer step finished
for `timeout` seconds, after writing every thread's stack (and each data-loader
worker's, through faulthandler on SIGUSR1) into the run folder."""

import faulthandler
import logging
import os
import shutil
import signal
import tempfile
import threading
import time

log = logging.getLogger("camodet")

EXIT_STALLED = 4
WORKER_DUMP = "stall-worker-{}.txt"
LIKELY_CAUSES = (
    "a data-loader worker stuck reading a file (network filesystem, corrupt file: rerun with "
    "--num-workers 0 to see which), a process of a multi-GPU run that died or hangs in a "
    "collective, or a GPU that stopped responding"
)


def worker_init(dump_dir: str | None, stop_signals: tuple, trainer_finished, worker_id: int) -> None:
    """In each data-loader worker: the stop signals are the trainer's; SIGUSR1 dumps this worker's stack."""
    from .interrupt import ignore_in_worker

    ignore_in_worker(stop_signals, trainer_finished)
    if dump_dir and hasattr(signal, "SIGUSR1"):
        fh = open(os.path.join(dump_dir, WORKER_DUMP.format(worker_id)), "w")  # kept open for the handler
        faulthandler.register(signal.SIGUSR1, file=fh, all_threads=True)


def loader_state(it) -> str:
    """What a multi-process DataLoader iterator is waiting for."""
    workers = getattr(it, "_workers", None)
    if not workers:
        return "data loader: in-process (num_workers 0) or not started"
    lines = [
        f"data loader: {len(workers)} workers, batches sent {getattr(it, '_send_idx', '?')}, "
        f"received {getattr(it, '_rcvd_idx', '?')}, outstanding {getattr(it, '_tasks_outstanding', '?')}"
    ]
    for i, w in enumerate(workers):
        lines.append(f"  worker {i}: pid {w.pid}, alive {w.is_alive()}")
    return "\n".join(lines)


class StallWatchdog:
    """Ends a run whose main thread made no progress (`beat`) for `timeout` seconds, after
    writing every thread's and loader worker's stack to `report_path()` (a file of the run
    folder); 0 turns it off."""

    def __init__(self, timeout: float, report_path):
        self.timeout, self.report_path = timeout, report_path
        self.where, self.last = "starting", time.monotonic()
        self.loader_iter = None
        # Workers write their stacks here on SIGUSR1; the dump copies them into the run folder.
        self.dump_dir = tempfile.mkdtemp(prefix="camodet-stall-") if timeout > 0 else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camodet-watchdog", daemon=True)

    @property
    def enabled(self) -> bool:
        return self.timeout > 0

    def __enter__(self) -> "StallWatchdog":
        if self.enabled:
            self.last = time.monotonic()
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.dump_dir:
            shutil.rmtree(self.dump_dir, ignore_errors=True)

    def beat(self, where: str) -> None:
        self.where, self.last = where, time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(min(5.0, self.timeout / 4)):
            idle = time.monotonic() - self.last
            if idle > self.timeout:
                path = self.dump(idle)
                for w in getattr(self.loader_iter, "_workers", None) or []:
                    w.kill()  # a hung worker would outlive us, holding the terminal and the GPU
                log.error(
                    f"camodet: error: no optimizer step finished for {idle:.0f} s (last progress: "
                    f"{self.where}); stacks written to {path}. Likely causes: {LIKELY_CAUSES}. "
                    f"Raise --stall-timeout if a step really takes this long"
                )
                logging.shutdown()
                os._exit(EXIT_STALLED)  # the main thread is stuck: nothing else can end the run

    def dump(self, idle: float) -> str:
        """Write every thread's stack and the loader workers' to the run folder;
        returns the file's path."""
        path = self.report_path()
        workers = getattr(self.loader_iter, "_workers", None) or []
        for w in workers:
            if w.is_alive() and hasattr(signal, "SIGUSR1"):
                os.kill(w.pid, signal.SIGUSR1)
        time.sleep(1.0 if workers else 0)  # let the workers write their stacks
        with open(path, "w") as fh:
            fh.write(f"no optimizer step for {idle:.0f} s; last progress: {self.where}\n")
            fh.write(loader_state(self.loader_iter) + "\n\n")
            fh.flush()
            faulthandler.dump_traceback(fh, all_threads=True)
            for i in range(len(workers)):
                wpath = os.path.join(self.dump_dir, WORKER_DUMP.format(i))
                if os.path.isfile(wpath):
                    with open(wpath) as wf:
                        fh.write(f"\n--- data-loader worker {i} ---\n{wf.read()}")
        return path
