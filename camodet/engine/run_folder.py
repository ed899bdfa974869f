"""The run folder: a new run never silently replaces the checkpoints of an earlier one."""

import logging
import os
import re
import shutil

from .checkpoint import CheckpointError

log = logging.getLogger("camodet")

_CHECKPOINT_NAMES = r"(last|best_model|epoch_\d+)\.pth"
_CHECKPOINT = re.compile(rf"^{_CHECKPOINT_NAMES}$")
# Everything a run writes into its folder; --overwrite removes only these, never other files.
_RUN_FILES = re.compile(rf"^({_CHECKPOINT_NAMES}|metrics\.jsonl|config\.yaml|report\.html|stall-.*\.txt)$")
_RUN_DIRS = ("tensorboard", "report")


def checkpoints_in(run_dir: str) -> list[str]:
    if not os.path.isdir(run_dir):
        return []
    return sorted(f for f in os.listdir(run_dir) if _CHECKPOINT.match(f))


def resumes_in_place(run_dir: str, resume_from: str | None) -> bool:
    return (
        bool(resume_from)
        and os.path.isdir(run_dir)
        and os.path.samefile(os.path.dirname(os.path.abspath(resume_from)), run_dir)
    )


def claim(run_dir: str, resume_from: str | None, overwrite: bool, remove: bool = True) -> None:
    """Refuse a run that would write over another run's checkpoints, unless it continues
    that run (--resume-from a file in the folder) or the user asked with --overwrite,
    in which case the earlier run's files (and only those) are removed first (by the
    process that `remove`s: rank 0 under DDP)."""
    found = checkpoints_in(run_dir)
    if not found or resumes_in_place(run_dir, resume_from) or (overwrite and not remove):
        return
    if not overwrite:
        resume = os.path.join(run_dir, "last.pth" if "last.pth" in found else found[-1])
        raise CheckpointError(
            f"{run_dir} already holds a run ({', '.join(found)}); continue it with --resume-from {resume}, "
            f"choose another --checkpoint-dir, or add --overwrite to replace it",
            "exists",
        )
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if _RUN_FILES.match(name) and os.path.isfile(path):
            os.unlink(path)
        elif name in _RUN_DIRS and os.path.isdir(path):
            shutil.rmtree(path)


def auto_resume(run_dir: str) -> str | None:
    """--resume-from auto: this folder's last.pth when it holds one (a requeued job goes on),
    else None (the first start of the job)."""
    last = os.path.join(run_dir, "last.pth")
    if os.path.isfile(last):
        log.info(f"--resume-from auto: resuming {last}")
        return last
    log.info(f"--resume-from auto: {run_dir} holds no last.pth; starting a new run")
    return None
