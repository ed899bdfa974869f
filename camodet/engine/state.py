"""What a run carries between steps and epochs, and how it becomes a checkpoint:
run counters, the position inside an epoch (for a mid-epoch resume), in-memory
snapshots of the last good state (for rollback)."""

import math
from dataclasses import dataclass, field, fields

import torch

from ..config import TrainConfig


@dataclass
class State:
    epoch: int = 0  # last completed epoch
    global_step: int = 0
    best_iou: float = -math.inf
    best_epoch: int = 0
    metrics: dict | None = None
    lr_scale: float = 1.0  # product of the rollback back-offs so far
    rollbacks: int = 0
    interrupted: str = ""  # the signal's name (or "time limit") when the run stopped early
    # What decides the computation beyond the config, saved so that an exact resume of a
    # warm restart (or of a multi-process run) computes what the uninterrupted run did.
    schedule_start: tuple = (1, 1)  # first epoch of each stage's LR schedule (a warm restart moves it)
    world_size: int = 1
    rollback_files: list = field(default_factory=list)  # per rollback, the files of its bad windows


@dataclass
class EpochProgress:
    """Where an epoch stands and what it has summed so far; saved on interruption so
    that the resumed epoch reports the same means as an uninterrupted one."""

    epoch: int
    micro_step: int = 0  # micro-batches done
    images: int = 0
    loss_sum: torch.Tensor | None = None
    part_sums: dict = field(default_factory=dict)
    usage_sum: torch.Tensor | None = None
    usage_batches: int = 0
    seconds: float = 0.0
    lr: float = 0.0
    grad_norm_sum: float = 0.0  # over the steps taken (host numbers from the guard's read)
    grad_steps: int = 0
    skipped: int = 0  # non-finite steps skipped (bf16/fp32)
    overflow: int = 0  # fp16 overflow steps skipped by the grad scaler

    def to_dict(self) -> dict:
        return to_cpu({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_dict(cls, d: dict, device) -> "EpochProgress":
        return cls(**to_device(d, device))

    def merge_ranks(self, world_mean) -> None:
        """Replace the per-process sums by their mean over processes before a mid-epoch save:
        only rank 0 writes the checkpoint, every rank resumes from it, and the epoch's means
        (sums over processes, then averaged) come out as in an uninterrupted run."""
        if self.loss_sum is not None:
            self.loss_sum = world_mean(self.loss_sum)
        self.part_sums = {k: world_mean(v) if torch.is_tensor(v) else v for k, v in self.part_sums.items()}
        if self.usage_sum is not None:
            self.usage_sum = world_mean(self.usage_sum)

    def stats(self, world_mean) -> dict:
        """Epoch means; `world_mean` averages a tensor over processes."""
        n = max(self.images, 1)
        loss = float(world_mean(self.loss_sum / n)) if self.loss_sum is not None else float("nan")
        return {
            "loss": loss,
            "parts": {f"loss_{k}": float(v / n) for k, v in self.part_sums.items()},
            "lr": self.lr,
            "images_per_s": self.images / max(self.seconds, 1e-9),
            "expert_usage": (self.usage_sum / max(self.usage_batches, 1)).tolist()
            if self.usage_sum is not None
            else [],
            "grad_norm": self.grad_norm_sum / self.grad_steps if self.grad_steps else None,
            "skipped_steps": self.skipped,
            "overflow_steps": self.overflow,
        }


def to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def checkpoint_dict(
    model,
    ema,
    optimizer,
    scaler,
    state: State,
    stage: int,
    cfg: TrainConfig,
    best: bool,
    guard=None,
    progress: EpochProgress | None = None,
) -> dict:
    raw = to_cpu(model.state_dict())
    ckpt = {
        "format": "camodet-checkpoint-v1",
        "model_state_dict": raw,
        "optimizer_state_dict": optimizer.state_dict(),
        "scaler_state_dict": scaler.state_dict(),
        "rng_state": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        "epoch": state.epoch,
        "global_step": state.global_step,
        "stage": stage,
        "best_iou": state.best_iou,
        "best_epoch": state.best_epoch,
        "lr_scale": state.lr_scale,
        "rollbacks": state.rollbacks,
        "schedule_start": list(state.schedule_start),
        "world_size": state.world_size,
        "metrics": state.metrics or {},
        "config": cfg.to_dict(),
        "weights": "raw",
        "normalization": model.normalization.to_dict(),  # the input statistics the weights expect
    }
    if guard is not None:
        ckpt["guard"] = guard.state_dict()
    if progress is not None:  # a mid-epoch checkpoint: the resumed run continues from here
        ckpt["position"] = progress.to_dict()
    if ema is not None:
        ckpt["ema_state_dict"] = to_cpu(ema.module.state_dict())
        if best:  # best_model.pth holds the weights that were validated: the EMA
            ckpt["model_state_dict"], ckpt["raw_model_state_dict"] = ckpt["ema_state_dict"], raw
            ckpt["weights"] = "ema"
    return ckpt


def snapshot(model, ema, optimizer, scaler, state: State, progress: EpochProgress) -> dict:
    """A host copy of everything a rollback restores."""
    return {
        "model": to_cpu(model.state_dict()),
        "ema": to_cpu(ema.module.state_dict()) if ema else None,
        "optimizer": to_cpu(optimizer.state_dict()),
        "scaler": scaler.state_dict(),
        "global_step": state.global_step,
        "progress": progress.to_dict(),
    }


def restore(snap: dict, model, ema, optimizer, scaler, state: State, device) -> EpochProgress:
    model.load_state_dict(snap["model"])
    if ema is not None:
        ema.module.load_state_dict(snap["ema"])
    optimizer.load_state_dict(snap["optimizer"])
    scaler.load_state_dict(snap["scaler"])
    state.global_step = snap["global_step"]
    return EpochProgress.from_dict(snap["progress"], device)
