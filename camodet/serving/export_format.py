"""The export folder's format, read here and written by export.py: file names, config.json's
format tag, and reading a folder back (config + weights). Below the Predictor and the Hub
download, which both read exports; no model code."""

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
