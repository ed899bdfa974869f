"""One training step, built from its parts: the forward and backward of a micro-batch and the
optimizer update of a window. The trainer and `camodet plan`'s measurement use the same step."""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..models.losses import LossSettings, total_loss


@dataclass
class TrainStep:
    """The parts a step needs. `model` is the bare model (its parameters, what EMA and the
    checkpoint see); `wrapped` the model as it trains (DDP around it, or itself); `forward`
    what computes the outputs (`wrapped`, or its torch.compile'd form)."""

    model: torch.nn.Module
    wrapped: torch.nn.Module
    forward: Callable
    ema: object  # timm ModelEmaV3, or None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss: LossSettings
    device: torch.device
    dtype: torch.dtype | None = None  # autocast dtype; None: fp32
    memory_format: torch.memory_format = torch.contiguous_format

    def backward(self, batch: dict, share: float, sync: bool = True):
        """Forward and backward of one micro-batch, its loss weighted by `share` (its part of the
        accumulation window). `sync=False` skips DDP's gradient all-reduce (not the window's
        last micro-batch). Returns (loss, loss parts, model output), detached from the graph."""
        image = batch["image"].to(self.device, non_blocking=True, memory_format=self.memory_format)
        mask = batch["mask"].to(self.device, non_blocking=True)
        no_sync = getattr(self.wrapped, "no_sync", None)
        with contextlib.nullcontext() if sync or no_sync is None else no_sync():
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                out = self.forward(image)
            loss, parts = total_loss(out, mask, self.loss)
            self.scaler.scale(loss * share).backward()
        return loss.detach(), parts, out

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def gradient_norm(self, params: list[torch.nn.Parameter], clip: float) -> torch.Tensor:
        """The window's true gradient norm (unscaled under fp16), clipped to `clip` when > 0."""
        self.scaler.unscale_(self.optimizer)  # no-op without fp16
        if clip > 0:
            return torch.nn.utils.clip_grad_norm_(params, clip)
        return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])

    def update(self, apply: bool = True) -> None:
        """End the window: step the optimizer (`apply`; under fp16 the scaler itself skips an
        overflow) and clear the gradients."""
        if apply:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def discard(self) -> None:
        """Drop the window's gradients without a step (a rollback follows); closes the fp16
        scaler's unscale_ so that the scaler can be restored."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.update()
