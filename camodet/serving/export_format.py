"""The export folder's format, read here and written by export.py: file names, config.json's
format tag, reading a folder back (config + weights), the one set of weights it holds, and the
weights' fingerprint. Below the Predictor and the Hub download, which both read exports; no
model code."""

import hashlib
import json
import os
from dataclasses import fields

from ..config import ModelConfig
from ..data.normalization import IMAGENET, Normalization
from ..runs.checkpoint import CheckpointError

EXPORT_FORMAT = "camodet-export-v1"
EXPORT_WEIGHTS, EXPORT_CONFIG = "model.safetensors", "config.json"


def model_config(d: dict) -> ModelConfig:
    known = {f.name for f in fields(ModelConfig)}
    cfg = ModelConfig(**{k: v for k, v in d.items() if k in known})
    cfg.pretrained, cfg.pretrained_path = False, None  # the file has every weight
    return cfg


def export_normalization(cfg: dict) -> Normalization:
    """config.json's input statistics (0..255 scale there, as the ONNX input is documented)."""
    inp = cfg.get("input") or {}
    if "mean" not in inp or "std" not in inp:
        return IMAGENET
    return Normalization(tuple(v / 255.0 for v in inp["mean"]), tuple(v / 255.0 for v in inp["std"]))


def read_export(folder: str) -> tuple[dict, dict]:
    """(config.json, state dict) of an export folder."""
    from safetensors.torch import load_file

    cfg_path, w_path = os.path.join(folder, EXPORT_CONFIG), os.path.join(folder, EXPORT_WEIGHTS)
    for p in (cfg_path, w_path):
        if not os.path.isfile(p):
            raise CheckpointError(
                f"{folder}: not a camodet export folder ({os.path.basename(p)} missing); "
                f"create one with 'camodet export CKPT {folder}'",
                "foreign",
            )
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    if cfg.get("format") != EXPORT_FORMAT:
        raise CheckpointError(
            f"{cfg_path}: format {cfg.get('format')!r}, expected {EXPORT_FORMAT!r}", "foreign"
        )
    return cfg, load_file(w_path)


def held_weights(cfg: dict) -> str | None:
    """'ema' or 'raw': the one set of weights an export holds, as its config.json records it (None:
    an export written before camodet recorded the set rather than the request, 'auto')."""
    held = cfg.get("weights")
    return held if held in ("ema", "raw") else None


def check_weights_request(folder: str, cfg: dict, asked: str) -> None:
    """An export holds one set of weights: asking it for another one is refused, never answered
    with the set it holds; auto, or the very set it holds, is fine."""
    held = held_weights(cfg)
    if asked == "auto" or asked == held:
        return
    if held is None:
        raise CheckpointError(
            f"{folder}: this export does not record which weights it holds (written by an older "
            f"camodet); leave out --weights {asked}, or export the checkpoint again with --weights {asked}",
            "foreign",
        )
    raise CheckpointError(
        f"{folder}: an export holds one set of weights, the {held} ones; --weights {asked} needs the "
        f"training checkpoint ('camodet export CKPT DIR --weights {asked}'), or leave --weights out",
        "foreign",
    )


def weights_fingerprint(state: dict) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes: the same weights give the same
    value from a checkpoint, an export folder or a model on any device."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def file_fingerprint(path: str) -> str:
    """sha256 of a file's bytes (an ONNX graph: what an ONNX Runtime prediction came from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
