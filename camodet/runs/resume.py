"""The resume decision: continuing a checkpoint is exact when nothing that changes the
computation differs from the run that wrote it, a warm restart when something does, and
refused when the checkpoint holds another architecture."""

import logging
import math
import os
import shlex
import sys
from dataclasses import dataclass

from ..config import TrainConfig
from .checkpoint import POSITION, atomic_save, check_arch, load_checkpoint
from .errors import CheckpointError
from .folder import BEST, BEST_METRIC, RunFolder

log = logging.getLogger("camodet")

# Settings that do not change what a run computes; a resume that differs only in
# these is still an exact continuation. Where the backbone's ImageNet weights came from
# is one of them: a resume takes every weight from its checkpoint.
NOT_HYPERPARAMETERS = {
    "run.checkpoint_dir",
    "run.resume_from",
    "run.init_from",
    "run.overwrite",
    "run.device",
    "run.log_every",
    "run.use_ddp",
    "run.keep_last",
    "run.tensorboard",
    "run.image_every",
    "run.tracker",
    "run.tracking_uri",
    "run.time_limit",
    "run.preempt_signal",
    "run.requeue_on_preempt",
    "model.pretrained",
    "model.pretrained_path",
    "data.num_workers",
    "data.skip_bad_files",
    # data.cache is a hyperparameter: the cache holds images pre-resized with INTER_AREA, so the
    # training inputs differ from those decoded from the files.
    "data.cache_dir",
}
NOT_HYPERPARAMETER_SECTIONS = {"safety", "speed"}


def flat(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def is_hyperparameter(key: str) -> bool:
    """Whether the dotted setting `key` changes what a run computes."""
    return key not in NOT_HYPERPARAMETERS and key.split(".")[0] not in NOT_HYPERPARAMETER_SECTIONS


def changed_keys(saved: dict, current: dict) -> list[str]:
    """The dotted hyperparameters that differ between two config dicts (nested or flat), in the
    current config's order, then those only the saved one has."""
    a, b = flat(saved), flat(current)
    # A setting added after the checkpoint was written, now at its default (which is what the older
    # version did), changes nothing: resuming such a checkpoint stays exact.
    defaults = flat(TrainConfig().to_dict())
    return [
        k
        for k in [*b, *(k for k in a if k not in b)]
        if is_hyperparameter(k) and a.get(k) != b.get(k) and not (k not in a and b.get(k) == defaults.get(k))
    ]


def changed_settings(saved: dict, current: dict) -> list[str]:
    """'key: old -> new' for every hyperparameter that differs between two config dicts."""
    a, b = flat(saved), flat(current)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(changed_keys(saved, current))]


def resume_changes(ckpt: dict, cfg: TrainConfig, world: int, autocast: str) -> list[str]:
    """Why resuming `ckpt` cannot continue exactly (empty: it can). Another process count
    changes the effective batch, the steps per epoch and which samples each rank holds,
    so no uninterrupted run computes what the continuation would: a warm restart. So does
    another autocast dtype (`autocast`: what --amp resolves to on this device, 'bf16', 'fp16'
    or 'fp32'): --amp auto is bf16 on an A100 and fp16 with a grad scaler on a T4."""
    changes = changed_settings(ckpt.get("config", {}), cfg.to_dict())
    saved_autocast = ckpt.get("autocast")  # absent before camodet 0.1.2: the --amp string decides
    if saved_autocast is not None:
        changes = [c for c in changes if not c.startswith("optim.amp:")]  # auto -> bf16 on an A100: same
        if saved_autocast != autocast:
            changes.append(f"autocast: {saved_autocast} -> {autocast} (--amp {cfg.optim.amp} on this device)")
    saved_world = ckpt.get("world_size")  # absent in checkpoints of camodet before 0.1.1
    if saved_world is not None and int(saved_world) != world:
        changes.append(
            f"processes: {int(saved_world)} -> {world} (the effective batch and the data each "
            f"process sees change)"
        )
    return changes


@dataclass
class Resume:
    """A checkpoint to continue from, read once, and how: exact (no changes) or a warm
    restart (the changes listed), in place (the same run folder: its best so far counts)."""

    path: str
    ckpt: dict
    changes: list[str]
    same_run: bool

    @property
    def exact(self) -> bool:
        return not self.changes

    @property
    def epoch(self) -> int:
        return int(self.ckpt["epoch"])

    @property
    def mid_epoch(self) -> bool:
        return POSITION in self.ckpt

    def describe(self) -> str:
        """The log line that says what the resume does."""
        if not self.exact:
            restart = self.epoch + 1
            return (
                f"warm restart from {self.path} (epoch {self.epoch}): weights and EMA loaded, schedule "
                f"re-planned from epoch {restart}"
                + (
                    f" (the interrupted epoch {restart} starts again from its beginning)"
                    if self.mid_epoch
                    else ""
                )
                + "; changed: "
                + "; ".join(self.changes)
            )
        if self.mid_epoch:
            p = self.ckpt[POSITION]
            return (
                f"resuming {self.path} exactly inside epoch {p['epoch']}, after {p['micro_step']} "
                f"micro-batches"
            )
        return f"resuming {self.path} exactly after epoch {self.epoch}"


def open_resume(cfg: TrainConfig, world: int, autocast: str) -> Resume:
    """Read --resume-from and decide; a checkpoint of another architecture is refused here."""
    path = cfg.run.resume_from
    ckpt = load_checkpoint(path)
    check_arch(ckpt, cfg.to_dict()["model"], path)
    changes = resume_changes(ckpt, cfg, world, autocast)
    return Resume(path, ckpt, changes, RunFolder(cfg.run.checkpoint_dir).holds(path))


def _best_mark(ckpt: dict) -> tuple[int, float]:
    """(best epoch, best score) a checkpoint records: the file written at a best epoch records
    itself, so two files with one mark belong to the same history."""
    return int(ckpt.get("best_epoch", 0)), float(ckpt.get("best_iou", -math.inf))


def _best_source(resume: Resume, folder: RunFolder) -> tuple[str, dict] | None:
    """A file holding the weights of the resumed history's best epoch, read: the resumed file
    when it was written at that epoch's end, else that epoch's numbered file (--keep-last)."""
    want = _best_mark(resume.ckpt)
    for path in (resume.path, folder.numbered(want[0])):
        try:
            ckpt = resume.ckpt if path == resume.path else load_checkpoint(path)
        except CheckpointError:
            continue  # absent or unreadable: not a source
        at_its_end = POSITION not in ckpt and int(ckpt["epoch"]) == want[0]
        if at_its_end and _best_mark(ckpt) == want:
            return path, ckpt
    return None


def settle_best(resume: Resume, folder: RunFolder) -> bool:
    """Make best_model.pth belong to the history a resume in place continues: a best written by a
    branch the run left (it resumed from an earlier epoch) is replaced by the resumed history's
    best epoch, or removed when no file holds that epoch any more. Returns False in that last
    case: the run then forgets its best so far, so that the next validated epoch writes one and
    the run's final message names the file's epoch. Call it on the process that writes files."""
    if not resume.same_run:
        return True
    want, found = _best_mark(resume.ckpt), _file_mark(folder.best)
    if found == want or (found is None and want[0] == 0):
        return True
    held = (
        f"{BEST} held epoch {found[0]} ({BEST_METRIC} {found[1]:.4f}) of a branch this run left"
        if found
        else f"{BEST} was missing or unreadable"
    )
    source = _best_source(resume, folder) if want[0] else None
    if source is not None:
        atomic_save(source[1], folder.best)
        log.warning(f"{held}: rewritten from {source[0]} (epoch {want[0]}, the resumed history's best)")
        return True
    if os.path.isfile(folder.best):
        os.unlink(folder.best)
    if not want[0]:
        log.warning(f"{held}: removed (the resumed history has no best yet)")
        return True
    log.warning(
        f"{held}: removed; no file holds epoch {want[0]} ({BEST_METRIC} {want[1]:.4f}), the resumed "
        f"history's best (--keep-last K keeps such files), so the next validated epoch becomes the best"
    )
    return False


def _file_mark(path: str) -> tuple[int, float] | None:
    """The best mark of a checkpoint file; None when it is absent or unreadable."""
    try:
        return _best_mark(load_checkpoint(path, mmap=True))
    except CheckpointError:
        return None


def program() -> list[str]:
    """How this process was started, for a command the user can paste."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name == "__main__.py":
        return ["python", "-m", "camodet"]
    if name.endswith(".py"):
        return ["python", sys.argv[0]]
    return ["camodet"]


def resume_command(argv: list[str], last: str) -> str:
    """The command that was run, continuing from `last`: --resume-from replaced (a warm
    restart's source becomes this run's own last checkpoint), --init-from and --overwrite dropped."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--resume-from", "--init-from"):
            skip = True
        elif not (a == "--overwrite" or a.startswith(("--resume-from=", "--init-from="))):
            kept.append(a)
    return shlex.join([*program(), *kept, "--resume-from", last])
