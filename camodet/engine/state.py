"""What a pass over an epoch carries: the position inside the epoch and its running sums
(saved for a mid-epoch resume), and in-memory snapshots of the last good state (for
rollback). The run's counters (RunState) are part of the checkpoint format."""

from dataclasses import dataclass, field, fields

import torch

from ..runs.checkpoint import RunState, to_cpu


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

    def add(self, images: int, loss: torch.Tensor, parts: dict, expert_usage: list) -> None:
        """Sum a micro-batch of `images` images: its (detached) loss and parts weighed by its
        images, and its experts' routing shares."""
        self.images += images
        self.loss_sum += loss * images
        for k, v in parts.items():
            self.part_sums[k] = self.part_sums.get(k, 0) + v * images
        if expert_usage:
            usage = torch.stack(expert_usage).detach()
            self.usage_sum = usage if self.usage_sum is None else self.usage_sum + usage
            self.usage_batches += 1

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


def to_device(obj, device):
    """A nest of tensors moved to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def snapshot(model, ema, optimizer, scaler, state: RunState, progress: EpochProgress) -> dict:
    """A host copy of everything a rollback restores."""
    return {
        "model": to_cpu(model.state_dict()),
        "ema": to_cpu(ema.module.state_dict()) if ema else None,
        "optimizer": to_cpu(optimizer.state_dict()),
        "scaler": scaler.state_dict(),
        "global_step": state.global_step,
        "progress": progress.to_dict(),
    }


def restore(snap: dict, model, ema, optimizer, scaler, state: RunState, device) -> EpochProgress:
    model.load_state_dict(snap["model"])
    if ema is not None:
        ema.module.load_state_dict(snap["ema"])
    optimizer.load_state_dict(snap["optimizer"])
    scaler.load_state_dict(snap["scaler"])
    state.global_step = snap["global_step"]
    return EpochProgress.from_dict(snap["progress"], device)
