"""The resume decision: continuing a checkpoint is exact when nothing that changes the
computation differs from the run that wrote it, a warm restart when something does, and
refused when the checkpoint holds another architecture."""

from dataclasses import dataclass

from ..config import TrainConfig
from .checkpoint import POSITION, check_arch, load_checkpoint
from .folder import RunFolder

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


def changed_settings(saved: dict, current: dict) -> list[str]:
    """'key: old -> new' for every hyperparameter that differs between two config dicts."""
    a, b = flat(saved), flat(current)
    # A setting added after the checkpoint was written, now at its default (which is what the older
    # version did), changes nothing: resuming such a checkpoint stays exact.
    defaults = flat(TrainConfig().to_dict())
    return [
        f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if k not in NOT_HYPERPARAMETERS
        and k.split(".")[0] not in NOT_HYPERPARAMETER_SECTIONS
        and a.get(k) != b.get(k)
        and not (k not in a and b.get(k) == defaults.get(k))
    ]


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
