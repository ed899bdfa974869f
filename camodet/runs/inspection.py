"""`camodet inspect`: what a checkpoint holds and whether it is safe to resume from."""

import math
import os

import torch

from ..data.normalization import Normalization
from .checkpoint import EMA, POSITION, CheckpointError, load_checkpoint, model_weights, nonfinite_tensors

CLEAN, NONFINITE, BROKEN = 0, 1, 2  # exit codes


def inspect_checkpoint(path: str) -> dict:
    """What `path` holds (position, best, metrics, settings, weights) and whether it reads
    completely and holds only finite numbers; `exit_code` says which."""
    report = {"path": path, "size_bytes": os.path.getsize(path) if os.path.isfile(path) else None}
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        return {**report, "integrity": e.kind, "error": str(e), "status": "broken", "exit_code": BROKEN}
    cfg = ckpt.get("config", {})
    model, optim, data, stages = (cfg.get(k, {}) for k in ("model", "optim", "data", "stages"))
    weights = model_weights(ckpt)
    tensors = [v for v in weights.values() if isinstance(v, torch.Tensor)]
    bad = nonfinite_tensors(ckpt)
    position = ckpt.get(POSITION)
    report.update(
        {
            "integrity": "ok",
            "format": ckpt.get("format", "unknown"),
            "epoch": ckpt.get("epoch"),
            "stage": ckpt.get("stage"),
            "global_step": ckpt.get("global_step"),
            "mid_epoch": {"epoch": position["epoch"], "micro_step": position["micro_step"]}
            if position
            else None,
            "best_iou": _finite_or_none(ckpt.get("best_iou")),
            "best_epoch": ckpt.get("best_epoch"),
            "weights": ckpt.get("weights", "raw"),
            "has_ema": EMA in ckpt,
            "normalization": Normalization.of_checkpoint(ckpt).to_dict(),
            "normalization_saved": "normalization" in ckpt,
            "lr_scale": ckpt.get("lr_scale", 1.0),
            "rollbacks": ckpt.get("rollbacks", 0),
            "metrics": ckpt.get("metrics", {}),
            "config": {
                "backbone": model.get("backbone"),
                "num_experts": model.get("num_experts"),
                "deep_supervision": model.get("deep_supervision"),
                "img_size": data.get("img_size"),
                "batch_size": optim.get("batch_size"),
                "stage2_batch_size": optim.get("stage2_batch_size"),
                "lr": optim.get("lr"),
                "stage2_lr": optim.get("stage2_lr"),
                "epochs": stages.get("epochs"),
                "stage1_epochs": stages.get("stage1_epochs"),
            },
            "tensors": len(tensors),
            "parameters": int(sum(t.numel() for t in tensors)),
            "nonfinite_tensors": bad,
            "status": "clean" if not bad else "non-finite",
            "exit_code": CLEAN if not bad else NONFINITE,
        }
    )
    return report


def _finite_or_none(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def format_inspection(r: dict) -> str:
    """inspect_checkpoint's report as the lines `camodet inspect` prints."""
    if r["status"] == "broken":
        return f"{r['path']}: BROKEN ({r['integrity']})\n  {r['error']}"
    size = f"{r['size_bytes'] / 1e6:.1f} MB" if r["size_bytes"] else "?"
    c = r["config"]
    where = (
        f"inside epoch {r['mid_epoch']['epoch']} after {r['mid_epoch']['micro_step']} micro-batches "
        f"(interrupted; resumes mid-epoch)"
        if r["mid_epoch"]
        else f"after epoch {r['epoch']}"
    )
    best = f"{r['best_iou']:.4f} at epoch {r['best_epoch']}" if r["best_iou"] is not None else "none yet"
    metrics = ", ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r["metrics"].items()
    )
    lines = [
        f"{r['path']}: {r['status'].upper()} ({size}, {r['format']}, file reads completely)",
        f"  position     {where}, stage {r['stage']}, optimizer step {r['global_step']}",
        f"  best IoU     {best}",
        f"  last metrics {metrics or 'none'}",
        f"  weights      {r['weights']}{' (+ EMA)' if r['has_ema'] else ''}: {r['tensors']} tensors, "
        f"{r['parameters'] / 1e6:.2f} M values",
        f"  input        {Normalization.from_dict(r['normalization'])}"
        + ("" if r["normalization_saved"] else " (not saved in this older checkpoint: ImageNet assumed)"),
        f"  config       {c['backbone']}, {c['num_experts']} experts, deep supervision "
        f"{c['deep_supervision']}, "
        f"img {c['img_size']}, batch {c['batch_size']}/{c['stage2_batch_size'] or c['batch_size']}, "
        f"lr {c['lr']}/{c['stage2_lr'] if c['stage2_lr'] is not None else c['lr']}, "
        f"{c['epochs']} epochs ({c['stage1_epochs']} in stage 1)",
    ]
    if r["rollbacks"]:
        lines.append(f"  safety       {r['rollbacks']} rollback(s), LR x{r['lr_scale']:g} of the plan")
    if r["nonfinite_tensors"]:
        shown = ", ".join(r["nonfinite_tensors"][:10])
        more = len(r["nonfinite_tensors"]) - 10
        lines.append(
            f"  NON-FINITE   {len(r['nonfinite_tensors'])} tensor(s) hold NaN/Inf: {shown}"
            + (f" and {more} more" if more > 0 else "")
            + "; do not resume from this file"
        )
    return "\n".join(lines)
