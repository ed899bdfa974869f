"""Measure real training steps: seconds per micro-step and peak memory for one stage and
micro-batch size. Run as a module in a fresh process per measurement, so that the CPU's
peak RSS (which cannot be reset) belongs to that measurement alone."""

import json
import subprocess
import sys
import time

import torch

from ..config import ModelConfig
from ..losses import total_loss
from ..models import build_model
from .device import amp_dtype, resolve_device
from .monitor import peak_memory_mb


def measure_step(model_cfg: dict, img_size: int, batch: int, stage: int, grad_checkpointing: bool = False,
                 steps: int = 2, device: str = "auto") -> dict:
    dev = resolve_device(device)
    torch.manual_seed(0)
    cfg = ModelConfig(**{**model_cfg, "pretrained": False, "pretrained_path": None})
    model = build_model(cfg).to(dev)
    if stage == 1:
        model.set_frozen_groups(set(range(model.backbone.num_groups)))
    model.set_grad_checkpointing(grad_checkpointing)
    model.train()
    fmt = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=dev.type == "cuda" or None)
    x = torch.randn(batch, 3, img_size, img_size, device=dev).to(memory_format=fmt)
    y = (torch.rand(batch, 1, img_size, img_size, device=dev) > 0.7).float()
    dtype = amp_dtype("auto", dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)

    def step():
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            out = model(x)
        loss, _ = total_loss(out, y, model.side_weights, 0.01)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    step()  # warm-up: allocator, optimizer state
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sec = (time.perf_counter() - t) / steps
    mem, kind = peak_memory_mb(dev)
    return {"stage": stage, "batch": batch, "s_per_step": sec, "peak_mb": mem, "memory": kind,
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}


def measure_in_subprocess(**spec) -> dict:
    """measure_step in a fresh interpreter; {'error': ...} when it fails (e.g. out of memory)."""
    out = subprocess.run([sys.executable, "-m", "camodet.engine.measure", json.dumps(spec)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or ["failed"]
        return {"stage": spec["stage"], "batch": spec["batch"], "error": lines[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_candidates(model_cfg: dict, img_size: int, candidates: list[int], grad_checkpointing: bool, steps: int,
                       device: str, budget_mb: float, on_result=lambda m: None) -> list[dict]:
    """Per stage, micro-batches in increasing order until one fails or exceeds the budget."""
    measured = []
    for stage in (1, 2):
        for batch in sorted(candidates):
            m = measure_in_subprocess(model_cfg=model_cfg, img_size=img_size, batch=batch, stage=stage,
                                      grad_checkpointing=grad_checkpointing, steps=steps, device=device)
            measured.append(m)
            on_result(m)
            if "error" in m or m["peak_mb"] > budget_mb:
                break
    return measured


if __name__ == "__main__":
    print(json.dumps(measure_step(**json.loads(sys.argv[1]))))
