"""Measure real training steps: seconds per micro-step and peak memory for one stage and
micro-batch size, for `camodet plan` and the speed benchmarks. The step is the trainer's own
(engine/step.py's build_train_step from a TrainConfig), never a copy of it. Run as a module in a
fresh process per measurement, so that the CPU's peak RSS (which cannot be reset) belongs to that
measurement alone."""

import dataclasses
import json
import subprocess
import sys
import time

import torch

from ..config import TrainConfig
from ..models import build_model
from ..models.device import amp_dtype, resolve_device, tune_kernels
from .monitor import peak_memory_mb
from .step import TrainStep, build_train_step

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


def step_settings(cfg: TrainConfig) -> dict:
    """The settings of `cfg` that decide its training step (its optim and speed sections), flat
    by field name: what `camodet plan` passes to measure_step for the run it plans."""
    return {**dataclasses.asdict(cfg.optim), **dataclasses.asdict(cfg.speed)}


def step_config(model_cfg: dict, **settings) -> TrainConfig:
    """The training config a measurement stands for: `model_cfg` with random weights (they cost
    what trained ones do, and need no file or network), `settings` by field name (amp, compile,
    grad_checkpointing, boundary_gain, use_ema, ...), the trainer's defaults for the rest."""
    model = {**model_cfg, "pretrained": False, "pretrained_path": None}
    return TrainConfig.from_dict({"model": model, **settings})


def trainer_step(cfg: TrainConfig, stage: int, device: torch.device) -> TrainStep:
    """The trainer's own step for `cfg` (build_train_step: its loss settings, optimizer groups,
    grad scaler, EMA and compile wrapper) on `device`, the model set up for `stage`: stage 1 with
    the backbone frozen, stage 2 all trainable (the most that progressive unfreezing trains)."""
    model = build_model(cfg.model).to(device)
    step = build_train_step(cfg, model, device, amp_dtype(cfg.optim.amp, device))
    if stage == 1:
        step.model.set_frozen_groups(set(range(step.model.backbone.num_groups)))
    step.wrapped.train()
    return step


def optimizer_step(step: TrainStep, batch: dict, grad_clip: float) -> None:
    """One optimizer step on one micro-batch, as the trainer takes one: forward and backward, the
    gradient norm (clipped), the update and the EMA's."""
    step.backward(batch, 1.0)
    step.gradient_norm(step.trainable(), grad_clip)
    step.update()
    if step.ema is not None:
        step.ema.update(step.model)


def measure_step(
    model_cfg: dict,
    img_size: int,
    batch: int,
    stage: int,
    steps: int = 2,
    device: str = "auto",
    **settings,
) -> dict:
    """Seconds per training step and peak memory of one stage at one micro-batch size, with the
    trainer's step on random data (`steps` timed after warm-up). `settings`: the run's training
    settings by field name (step_settings), the trainer's defaults for those not given."""
    dev = resolve_device(device)
    tune_kernels(dev)  # as the trainer does
    torch.manual_seed(0)
    cfg = step_config(model_cfg, **settings)
    train_step = trainer_step(cfg, stage, dev)
    batch_data = {
        "image": torch.randn(batch, 3, img_size, img_size, device=dev),
        "mask": (torch.rand(batch, 1, img_size, img_size, device=dev) > 0.7).float(),
    }

    def step():
        optimizer_step(train_step, batch_data, cfg.optim.grad_clip)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2 if cfg.speed.compile else 1):  # warm-up: allocator, optimizer state, compilation
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
