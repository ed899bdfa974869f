"""One training step, built from its parts: the forward and backward of a micro-batch and the
optimizer update of a window. `build_train_step` is the one place a step is made from a config
and a model: the trainer's, and the one `camodet plan` and the speed benchmarks measure
(engine/measure.py), so that what is measured is what trains."""

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..config import TrainConfig
from ..models.device import memory_format as device_memory_format
from ..models.losses import LossSettings, total_loss
from ..models.timm_lib import timm
from .optim import build_optimizer

log = logging.getLogger("camodet")


class CompiledOrEager:
    """torch.compile'd forward that falls back to eager, once and with a message, where
    compilation fails (errors surface at the first call, not at torch.compile)."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.compiled = module, torch.compile(module)

    def __call__(self, x):
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as e:  # any backend failure: the run must not die for a speed-up
                first_line = (str(e).strip().splitlines() or [""])[0][:160]
                log.warning(
                    f"--compile: torch.compile failed ({type(e).__name__}: {first_line}); "
                    f"continuing without it"
                )
                self.compiled = None
        return self.module(x)


@dataclass
class TrainStep:
    """The parts a step needs. `model` is the bare model (its parameters, what EMA and the
    checkpoint see); `wrapped` the model as it trains (DDP around it, or itself: see `wrap`);
    `forward` what computes the outputs (`wrapped`, or under `compile` its compiled form)."""

    model: torch.nn.Module
    ema: object  # timm ModelEmaV3, or None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss: LossSettings
    device: torch.device
    dtype: torch.dtype | None = None  # autocast dtype; None: fp32
    memory_format: torch.memory_format = torch.contiguous_format
    compile: bool = False  # --compile: torch.compile the forward, eager where that fails
    wrapped: torch.nn.Module = field(init=False)
    forward: Callable = field(init=False)

    def __post_init__(self):
        self.wrap(self.model)

    def wrap(self, wrapped: torch.nn.Module) -> None:
        """Train through `wrapped`: the trainer wraps the model in DDP again whenever its
        trainable set changes (DDP registers only the parameters that then require grad)."""
        self.wrapped = wrapped
        self.forward = CompiledOrEager(wrapped) if self.compile else wrapped

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


def build_train_step(
    cfg: TrainConfig, model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None
) -> TrainStep:
    """The step `cfg` trains `model` (already on `device`, its weights loaded) with, `dtype` the
    autocast dtype (None: fp32). The model is set up as it trains (gradient checkpointing, memory
    format) before anything refers to its parameters: the optimizer (its parameter groups, all
    made up front), the grad scaler (fp16 only), the EMA copy and the loss settings."""
    if cfg.speed.grad_checkpointing:
        model.set_grad_checkpointing(True)
    memory_format = device_memory_format(cfg.speed.channels_last, device)
    model = model.to(memory_format=memory_format)
    optim = cfg.optim
    return TrainStep(
        model=model,
        optimizer=build_optimizer(model, optim.weight_decay, device),
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        ema=timm.utils.ModelEmaV3(model, decay=optim.ema_decay) if optim.use_ema else None,
        loss=LossSettings.for_model(model, optim.moe_loss_weight, optim.boundary_gain),
        device=device,
        dtype=dtype,
        memory_format=memory_format,
        compile=cfg.speed.compile,
    )
