"""The run folder: the one place that names its files, decides what "best" means, claims a
folder for a new run, keeps the last K numbered checkpoints and finds the checkpoint to
resume (in the manner of timm's CheckpointSaver, which owns file names, the best metric and
pruning). A new run never silently replaces the checkpoints of an earlier one."""

import logging
import math
import os
import re
import shutil
import time

from .errors import CheckpointError

log = logging.getLogger("camodet")

LAST = "last.pth"  # every epoch, and at a stop with the position inside the epoch
BEST = "best_model.pth"  # the epoch with the best validation metric
NUMBERED = "epoch_{}.pth"  # --keep-last K
METRICS = "metrics.jsonl"  # one record per epoch or event
CONFIG = "config.yaml"  # the run's settings, loadable with --config
REPORT = "report.html"
TRACKERS = "trackers.json"  # the --tracker runs' ids, so that a resume continues them
REPORT_DIR, TENSORBOARD_DIR = "report", "tensorboard"
STALL_REPORT = "stall-{}.txt"  # the watchdog's stacks of a run that hung, by time

# "Best" is one rule everywhere: the highest validation IoU; an epoch without one (no
# validation images, --val-fraction 0) is never best.
BEST_METRIC = "IoU"


def is_better(value: float, best: float) -> bool:
    """Whether a validation score `value` beats the best so far."""
    return math.isfinite(value) and value > best


def _pattern(name: str, fill: str) -> str:
    """A file-name template ('epoch_{}.pth') as a regular expression, `fill` for its field."""
    return re.escape(name).replace(re.escape("{}"), fill)


_NUMBERED = re.compile("^" + _pattern(NUMBERED, r"(\d+)") + "$")
_CHECKPOINT_NAMES = "|".join([re.escape(LAST), re.escape(BEST), _pattern(NUMBERED, r"\d+")])
_CHECKPOINT = re.compile(rf"^({_CHECKPOINT_NAMES})$")
# Everything a run writes into its folder; --overwrite removes only these, never other files.
_RUN_FILES = re.compile(
    "^("
    + "|".join(
        [
            _CHECKPOINT_NAMES,
            re.escape(METRICS),
            re.escape(CONFIG),
            re.escape(REPORT),
            re.escape(TRACKERS),
            _pattern(STALL_REPORT, ".*"),
        ]
    )
    + ")$"
)
_RUN_DIRS = (TENSORBOARD_DIR, REPORT_DIR)


class RunFolder:
    """Paths of a run's files and the rules for writing them."""

    def __init__(self, path: str):
        self.path = path

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def last(self) -> str:
        return self.file(LAST)

    @property
    def best(self) -> str:
        return self.file(BEST)

    @property
    def metrics(self) -> str:
        return self.file(METRICS)

    @property
    def config(self) -> str:
        return self.file(CONFIG)

    @property
    def report(self) -> str:
        return self.file(REPORT)

    @property
    def report_dir(self) -> str:
        return self.file(REPORT_DIR)

    @property
    def tensorboard(self) -> str:
        return self.file(TENSORBOARD_DIR)

    def stall_report(self) -> str:
        return self.file(STALL_REPORT.format(time.strftime("%Y%m%d-%H%M%S")))

    def numbered(self, epoch: int) -> str:
        return self.file(NUMBERED.format(epoch))

    def checkpoints(self) -> list[str]:
        """Names of the checkpoints in the folder, sorted."""
        if not os.path.isdir(self.path):
            return []
        return sorted(f for f in os.listdir(self.path) if _CHECKPOINT.match(f))

    def newest_weights(self) -> str | None:
        """The checkpoint to show predictions of: the best, else the last; None before either."""
        return next((p for p in (self.best, self.last) if os.path.isfile(p)), None)

    def holds(self, checkpoint: str | None) -> bool:
        """Whether `checkpoint` is a file of this folder (a resume in place continues this run)."""
        return (
            bool(checkpoint)
            and os.path.isdir(self.path)
            and os.path.samefile(os.path.dirname(os.path.abspath(checkpoint)), self.path)
        )

    def claim(
        self, resume_from: str | None, overwrite: bool, remove: bool = True, reads: dict | None = None
    ) -> None:
        """Refuse a run that would write over another run's checkpoints, unless it continues
        that run (--resume-from a file in the folder) or the user asked with --overwrite,
        in which case the earlier run's files (and only those) are removed first (by the
        process that `remove`s: rank 0 under DDP). `reads` ({flag: path}) are files this run
        still has to read (--init-from, --pretrained-path): --overwrite never removes one."""
        found = self.checkpoints()
        if not found or self.holds(resume_from):
            return
        if not overwrite:
            resume = self.file(LAST if LAST in found else found[-1])
            raise CheckpointError(
                f"{self.path} already holds a run ({', '.join(found)}); continue it with "
                f"--resume-from {resume}, "
                f"choose another --checkpoint-dir, or add --overwrite to replace it",
                "exists",
            )
        doomed = self._run_paths()
        self._refuse_removing_inputs(doomed, reads or {})
        if not remove:
            return
        for path in doomed:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)

    def _run_paths(self) -> list[str]:
        """What --overwrite removes: the earlier run's files and folders, nothing else."""
        return [
            self.file(name)
            for name in os.listdir(self.path)
            if (_RUN_FILES.match(name) and os.path.isfile(self.file(name)))
            or (name in _RUN_DIRS and os.path.isdir(self.file(name)))
        ]

    def _refuse_removing_inputs(self, doomed: list[str], reads: dict) -> None:
        # Checked on every rank, before anything is removed: the run would otherwise delete its
        # own input and then fail to read it, with both runs' weights gone.
        for flag, path in reads.items():
            if not path or not os.path.exists(path):
                continue
            real = os.path.realpath(path)
            for gone in map(os.path.realpath, doomed):
                if real == gone or real.startswith(gone + os.sep):
                    raise CheckpointError(
                        f"{flag} {path} is a file of the run in {self.path}, which --overwrite "
                        f"would remove before reading it; copy it out of the folder first, or "
                        f"choose another --checkpoint-dir",
                        "exists",
                    )

    def keep_last(self, epoch: int, keep: int, write) -> None:
        """epoch_N.pth for the last `keep` epochs, ordered by N as a number (epoch_10 after
        epoch_9); `write(path)` writes this epoch's. Files numbered after this epoch belong to
        a branch this run left (it resumed in place from an earlier checkpoint): they go first,
        so the file just written is never the one pruned."""
        write(self.numbered(epoch))
        numbered = [(int(m.group(1)), f) for f in os.listdir(self.path) if (m := _NUMBERED.match(f))]
        numbered.sort(key=lambda item: (item[0] <= epoch, item[0]))
        for _, f in numbered[:-keep]:
            os.unlink(self.file(f))

    def auto_resume(self) -> str | None:
        """--resume-from auto: this folder's last checkpoint when it holds one (a requeued job
        goes on), else None (the first start of the job)."""
        if os.path.isfile(self.last):
            log.info(f"--resume-from auto: resuming {self.last}")
            return self.last
        log.info(f"--resume-from auto: {self.path} holds no {LAST}; starting a new run")
        return None
