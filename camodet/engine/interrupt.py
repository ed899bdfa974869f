"""Graceful stop on SIGINT/SIGTERM: the handler only records the request; the
trainer finishes the optimizer step it is in, writes a resumable checkpoint
and returns. A second signal aborts at once."""

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum, frame):
        if self.signum is not None:       # second signal: the user means it
            self.__exit__()
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # handlers only install there
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}


def ignore_in_worker() -> None:
    """Data-loader workers share the terminal's process group: a Ctrl-C must reach
    only the trainer, or the workers die before the checkpoint is written."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
