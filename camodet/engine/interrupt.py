"""Graceful stop on SIGINT/SIGTERM (and the preemption signal) or at a time limit: the
handler only records the request; the trainer finishes the optimizer step it is in, writes a
resumable checkpoint and returns. A second Ctrl-C aborts at once."""

import functools
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import threading
import time

from ..runs.folder import LAST

log = logging.getLogger("camodet")

TIME_LIMIT = "time limit"
# sysexits' EX_TEMPFAIL: stopped at --time-limit or on the preemption signal; the last checkpoint
# holds the position, and the printed command (or --resume-from auto) continues the run.
EXIT_RESUMABLE = 75


def stopped_exit_code(reason: str) -> int:
    """A stopped command's exit status: 128 + the signal's number for Ctrl-C and SIGTERM, as a
    shell reports them; EXIT_RESUMABLE for the time limit and preemption (a scheduler requeues)."""
    if reason in ("SIGINT", "SIGTERM"):
        return 128 + int(getattr(signal, reason))
    return EXIT_RESUMABLE


clock = time.monotonic  # the time limit's clock (tests replace it)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_number(name: str) -> int:
    """'USR1', 'SIGUSR1' or 'usr1' -> signal.SIGUSR1."""
    return int(signal.Signals[f"SIG{name.upper().removeprefix('SIG')}"])


def requeue_slurm_job() -> bool:
    """Ask SLURM to put this job back in the queue (it starts again from its batch script)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        log.warning("--requeue-on-preempt: not a SLURM job (no SLURM_JOB_ID); not requeued")
        return False
    if shutil.which("scontrol") is None:
        log.warning("--requeue-on-preempt: scontrol is not on PATH; not requeued")
        return False
    proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if proc.returncode != 0:
        log.warning(f"--requeue-on-preempt: scontrol requeue {job} failed: {proc.stderr.strip()[:200]}")
        return False
    log.info(f"requeued SLURM job {job}; it resumes from {LAST} with --resume-from auto")
    return True


class StopRequest:
    """`time_limit` (seconds from now): the run stops itself once the work it still has to
    do before it can stop (the caller says how long that is) would pass the limit."""

    def __init__(self, time_limit: float | None = None, extra_signals: tuple = ()):
        self.signals = tuple(dict.fromkeys(SIGNALS + tuple(extra_signals)))
        self.signum: int | None = None
        self.deadline = clock() + time_limit if time_limit else None
        self.timed_out = False
        self.reason = ""  # a stop asked for by the program (a sweep's pruner), not a signal
        self.save_seconds = 1.0  # the trainer replaces this guess by the time its saves take
        self._previous: dict = {}
        # Read by the data-loader workers this run forks (ignore_in_worker), hence shared memory.
        self.finished = multiprocessing.RawValue("b", 0)

    @property
    def requested(self) -> bool:
        return self.signum is not None or self.timed_out or bool(self.reason)

    @property
    def name(self) -> str:
        if self.signum:
            return signal.Signals(self.signum).name
        return TIME_LIMIT if self.timed_out else self.reason

    def request(self, reason: str) -> None:
        """Stop at the end of this epoch as for a signal (a resumable last.pth, the run's
        `interrupted` set to `reason`): how an epoch hook ends a run cleanly on every rank."""
        self.reason = self.reason or reason

    def out_of_time(self, needed_s: float) -> bool:
        """True (from then on) when `needed_s` more seconds of work plus a save would pass the limit."""
        if self.deadline is not None and clock() + needed_s + self.save_seconds >= self.deadline:
            self.timed_out = True
        return self.timed_out

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:  # a second Ctrl-C: the user means it
            self.__exit__()
            raise KeyboardInterrupt
        # Other signals may come twice for one stop: SLURM signals every process of a job step and
        # torchrun's agent passes the same signal on to its ranks. SIGKILL follows if they mean it.
        self.signum = self.signum or signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # handlers only install there
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self.finished.value = 1
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}


def ignore_in_worker(signals: tuple, trainer_finished) -> None:
    """In a data-loader worker. Schedulers and service managers signal every process of a job
    (process group, cgroup), workers included: the stop is the trainer's, which saves the position
    and then ends its workers itself. Once the trainer has finished (`trainer_finished`, shared
    memory), SIGTERM ends a worker again: it is how the loader and multiprocessing's exit end a
    worker that did not quit, so a crashed trainer cannot wait for it forever."""
    for s in set(signals) - {signal.SIGTERM}:
        signal.signal(s, signal.SIG_IGN)
    if signal.SIGTERM in signals:
        signal.signal(signal.SIGTERM, functools.partial(_end_once_finished, trainer_finished))


def _end_once_finished(trainer_finished, signum, frame) -> None:
    if trainer_finished.value:
        os._exit(0)  # as PyTorch's worker does on its parent's SIGTERM
