"""Measure real training steps: seconds per micro-step and peak memory for one stage and
micro-batch size. Run as a module in a fresh process per measurement, so that the CPU's
peak RSS (which cannot be reset) belongs to that measurement alone."""

import json
import subprocess
import sys
import time

import torch

from ..config import ModelConfig
from ..models import build_model
from ..models.device import amp_dtype, memory_format, resolve_device, tune_kernels
from ..models.losses import LossSettings
from .monitor import peak_memory_mb
from .optim import build_optimizer
from .step import TrainStep

MEMORY_KINDS = {
    "cuda_card": "CUDA peak reserved by the allocator + CUDA context, on the card",
    "cuda_allocated": "CUDA allocator peak",
    "cpu_rss": "process peak RSS on the CPU",
}


def cuda_card_peak_mb(device: torch.device) -> float:
    """What the process needed from the card at its peak: the allocator's reserved peak plus
    what it holds outside the allocator (CUDA context, cuBLAS/cuDNN workspaces). That, not the
    allocated peak, is what must fit on a 16 GB card; the process must be alone on the GPU."""
    free, total = torch.cuda.mem_get_info(device)
    outside_allocator = (total - free) - torch.cuda.memory_reserved(device)
    return (torch.cuda.max_memory_reserved(device) + outside_allocator) / 2**20


def trainer_step(
    model_cfg: dict,
    stage: int,
    grad_checkpointing: bool,
    dev: torch.device,
    amp: str,
    channels_last: str,
    compile: bool,
    moe_loss_weight: float,
    weight_decay: float,
) -> TrainStep:
    """The trainer's own step (its model set up for `stage`, optimizer, loss and grad scaler) on `dev`."""
    cfg = ModelConfig(**{**model_cfg, "pretrained": False, "pretrained_path": None})
    model = build_model(cfg).to(dev)
    if stage == 1:
        model.set_frozen_groups(set(range(model.backbone.num_groups)))
    model.set_grad_checkpointing(grad_checkpointing)
    model.train()
    fmt = memory_format(channels_last, dev)
    model = model.to(memory_format=fmt)
    dtype = amp_dtype(amp, dev)
    return TrainStep(
        model,
        model,
        torch.compile(model) if compile else model,
        None,
        build_optimizer(model, weight_decay, dev),
        torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16),
        LossSettings.for_model(model, moe_loss_weight),
        dev,
        dtype,
        fmt,
    )


def measure_step(
    model_cfg: dict,
    img_size: int,
    batch: int,
    stage: int,
    grad_checkpointing: bool = False,
    steps: int = 2,
    device: str = "auto",
    amp: str = "auto",
    channels_last: str = "auto",
    compile: bool = False,
    moe_loss_weight: float = 0.01,
    weight_decay: float = 0.01,
) -> dict:
    """Seconds per training step and peak memory of one stage at one micro-batch size, with the
    trainer's step on random data (`steps` timed after warm-up)."""
    dev = resolve_device(device)
    tune_kernels(dev)  # as the trainer does
    torch.manual_seed(0)
    train_step = trainer_step(
        model_cfg, stage, grad_checkpointing, dev, amp, channels_last, compile, moe_loss_weight, weight_decay
    )
    batch_data = {
        "image": torch.randn(batch, 3, img_size, img_size, device=dev),
        "mask": (torch.rand(batch, 1, img_size, img_size, device=dev) > 0.7).float(),
    }

    def step():
        train_step.backward(batch_data, 1.0)
        train_step.update()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2 if compile else 1):  # warm-up: allocator, optimizer state, compilation
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sec = (time.perf_counter() - t) / steps
    mem, kind = peak_memory_mb(dev)
    result = {
        "stage": stage,
        "batch": batch,
        "s_per_step": sec,
        "peak_mb": mem,
        "memory": kind,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
    }
    if dev.type == "cuda":
        result.update(allocated_mb=mem, peak_mb=cuda_card_peak_mb(dev), memory="cuda_card")
    return result


def measure_in_subprocess(timeout: float | None = None, **spec) -> dict:
    """measure_step in a fresh interpreter; {'error': ...} when it fails (e.g. out of memory)
    or takes longer than `timeout` seconds."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "camodet.engine.measure", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"stage": spec["stage"], "batch": spec["batch"], "error": f"timed out after {timeout:g} s"}
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or ["failed"]
        return {"stage": spec["stage"], "batch": spec["batch"], "error": lines[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_candidates(
    step_spec: dict, candidates: list[int], budget_mb: float, on_result=lambda m: None
) -> list[dict]:
    """Per stage, micro-batches in increasing order until one fails or exceeds the budget.
    `step_spec`: measure_step's arguments other than batch and stage."""
    measured = []
    for stage in (1, 2):
        for batch in sorted(candidates):
            m = measure_in_subprocess(**step_spec, batch=batch, stage=stage)
            measured.append(m)
            on_result(m)
            if "error" in m or m["peak_mb"] > budget_mb:
                break
    return measured


if __name__ == "__main__":
    print(json.dumps(measure_step(**json.loads(sys.argv[1]))))
