"""The trainer's hooks, one small object per concern (as detectron2's hooks). The Hook protocol
is what the Trainer calls on each, on rank 0: `before_train`, `after_epoch`, `after_train`. The
trainer's own hooks come first: the Checkpointer writes last.pth, the keep-last copies and
best_model.pth; the MetricsLogger appends the epoch's record to metrics.jsonl and TensorBoard;
the ConsoleReporter prints the epoch's line and any new advice. Those given to
`Trainer(cfg, hooks=...)` (the trackers, a sweep's pruning) follow. RunHistory is the run's
metrics.jsonl, kept in memory for the advice."""

import contextlib
import functools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..runs import history
from ..runs.checkpoint import atomic_save, load_checkpoint
from ..runs.errors import CheckpointError
from ..runs.folder import BEST_METRIC
from ..runs.health import new_advice
from .monitor import peak_memory_mb
from .state import EpochProgress

log = logging.getLogger("camodet")


@dataclass
class EpochResult:
    """A finished epoch, as the hooks see it: its pass, its training numbers and validation."""

    epoch: int
    stage: int
    progress: EpochProgress
    timing: dict | None  # LoopClock.summary() of the pass
    stats: dict  # EpochProgress.stats over all ranks
    val: dict  # validation metrics ({} without a validation set)
    improved: bool  # a new best
    validation_seconds: float


class Hook(Protocol):
    """What the Trainer calls on a hook, on rank 0 (the process that writes the run's files):
    `before_train` once the run is built and its monitors started; `after_epoch` after each
    epoch is validated, in the order the hooks were given; `after_train` as training ends, in
    the reverse order (as nested `with` blocks), with the error that ends it (None when it
    finished or stopped). A subclass overrides the points it needs; the others do nothing."""

    def before_train(self, trainer) -> None:
        return None

    def after_epoch(self, trainer, result: EpochResult) -> None:
        return None

    def after_train(self, trainer, error: BaseException | None) -> None:
        return None


@contextlib.contextmanager
def hooks_around_training(hooks: Sequence[Hook], trainer):
    """`before_train` on each hook in turn; on the way out `after_train` on each one started,
    last first, with the error on its way out of the block (which goes on), or None."""
    with contextlib.ExitStack() as started:
        for hook in hooks:
            hook.before_train(trainer)
            started.push(functools.partial(_after_train, hook, trainer))
        yield


def _after_train(hook: Hook, trainer, exc_type, error, tb) -> bool:
    hook.after_train(trainer, error)
    return False  # the error, if any, goes on


class RunHistory:
    """metrics.jsonl: every event appended on rank 0, and the records so far (earlier attempts
    in this folder included) for the health advice."""

    def __init__(self, path: str, is_main: bool):
        self.path, self.is_main = path, is_main
        self.records = history.read(path) if is_main else []
        self.loaded = len(self.records)  # those of earlier attempts; this process appends the rest

    def record(self, event: dict) -> None:
        if self.is_main:
            history.append(self.path, event)
            self.records.append(event)


class Checkpointer(Hook):
    """last.pth every epoch (and at a stop inside one), keep-last copies, best_model.pth on a new best.
    A write that fails (a full disk) ends the run saying which file and how to go on from there."""

    def save(self, trainer, path: str, progress: EpochProgress | None = None) -> dict:
        started = time.monotonic()
        ckpt = trainer.checkpoint.state_dict(
            trainer.stage, progress.to_dict() if progress is not None else None
        )
        with resume_hint_on_write_error(trainer.folder.last):
            atomic_save(ckpt, path)
        stop = trainer.stop  # what --time-limit keeps back for a save:
        stop.save_seconds = max(stop.save_seconds, time.monotonic() - started)
        return ckpt

    def after_epoch(self, trainer, result: EpochResult) -> None:
        folder, keep = trainer.folder, trainer.cfg.run.keep_last
        trainer.watchdog.beat(f"saving checkpoints of epoch {result.epoch}")
        last = self.save(trainer, folder.last)
        with resume_hint_on_write_error(folder.last):
            if keep > 0:
                folder.keep_last(result.epoch, keep, functools.partial(atomic_save, last))
            if result.improved:
                atomic_save(last, folder.best)


def where_to_resume(last: str) -> str:
    """What a run that failed says about going on once the cause is fixed: from the last.pth
    on disk (whichever epoch it holds; a failed save left the previous one), else from scratch."""
    if not os.path.isfile(last):
        return "no epoch was saved yet: then run it again"
    return f"then --resume-from {last} continues after epoch {load_checkpoint(last, mmap=True)['epoch']}"


@contextlib.contextmanager
def resume_hint_on_write_error(last: str):
    """A checkpoint write that failed (atomic_save left the file as it was) says where to go on from."""
    try:
        yield
    except CheckpointError as e:
        if e.kind != "write":
            raise
        raise CheckpointError(f"{e}; {where_to_resume(last)}", "write") from None


class MetricsLogger(Hook):
    """The epoch's record: to metrics.jsonl, to TensorBoard, and its prediction panel every
    --image-every epochs (and at the last)."""

    def after_epoch(self, trainer, result: EpochResult) -> None:
        record = self.epoch_record(trainer, result)
        trainer.history.record(record)
        trainer.tb.epoch(result.epoch, record)
        every, epoch = trainer.cfg.run.image_every, result.epoch
        if every and (epoch % every == 0 or epoch == trainer.plan.epochs):
            trainer.tb.panel(epoch, trainer.eval_model, trainer.val_set, trainer.device)

    @staticmethod
    def epoch_record(trainer, result: EpochResult) -> dict:
        """One line of metrics.jsonl for the epoch: the pass's numbers, validation, best, memory, timing."""
        state, stats = trainer.state, result.stats
        memory_mb, memory_kind = peak_memory_mb(trainer.device)
        record = {
            "type": "epoch",
            "epoch": result.epoch,
            "stage": result.stage,
            "global_step": state.global_step,
            "time_s": round(result.progress.seconds, 3),
            "images_per_s": stats["images_per_s"],
            **stats["parts"],
            "loss": stats["loss"],
            "lr": stats["lr"],
            "lr_scale": state.lr_scale,
            "grad_norm": stats["grad_norm"],
            "skipped_steps": stats["skipped_steps"],
            "overflow_steps": stats["overflow_steps"],
            "expert_usage": stats["expert_usage"],
            "val": result.val,
            "best_iou": state.best_iou,
            "best_epoch": state.best_epoch,
            "peak_memory_mb": round(memory_mb, 1),
            "memory_kind": memory_kind,
        }
        record.update(
            result.timing or {}, val_time_s=round(result.validation_seconds, 3), num_workers=trainer.workers
        )
        return record


class ConsoleReporter(Hook):
    """The epoch's one line on the console, then the advice the history newly calls for."""

    def __init__(self, cfg_dict: dict):
        self.cfg_dict = cfg_dict

    def after_epoch(self, trainer, result: EpochResult) -> None:
        stats, val = result.stats, result.val
        scored = f"{BEST_METRIC}: {val.get(BEST_METRIC, float('nan')):.4f}" if val else "no validation"
        print(
            f"Epoch {result.epoch}: Loss: {stats['loss']:.4f} | {scored} | LR: {stats['lr']:.6f} | "
            f"stage {result.stage} | {result.progress.seconds:.1f}s | {stats['images_per_s']:.1f} img/s"
            + (" | best" if result.improved else ""),
            flush=True,
        )
        for advice in new_advice(trainer.history.records, self.cfg_dict):
            log.warning(f"advice (epoch {advice.epoch}): {advice.message}")
