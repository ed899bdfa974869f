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
from .monitor import peak_memory_mb


def measure_step(model_cfg: dict, img_size: int, batch: int, stage: int, grad_checkpointing: bool = False,
                 steps: int = 2, device: str = "auto") -> dict:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
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
    dtype = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else None

    def step():
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            out = model(x)
        loss, _ = total_loss(out, y, model.side_weights, 0.01)
        loss.backward()
        opt.step()
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


if __name__ == "__main__":
    print(json.dumps(measure_step(**json.loads(sys.argv[1]))))
