"""Deployable weights: model.safetensors + config.json (enough to rebuild the model,
no training state) and, optionally, an ONNX graph checked against PyTorch."""

import contextlib
import io
import json
import logging
import os
from dataclasses import asdict

import numpy as np
import torch

from . import __version__
from .inference import EXPORT_CONFIG, EXPORT_FORMAT, EXPORT_WEIGHTS, Predictor

ONNX_FILE = "model.onnx"
ONNX_TOLERANCE = 1e-3


class ExportError(RuntimeError):
    """Exporting failed; the message says what is missing."""


class ProbabilityHead(torch.nn.Module):
    """What the ONNX graph computes: normalised image batch -> probability map at input size."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(image).logits)


def export(checkpoint: str, out_dir: str, weights: str = "auto", onnx: bool = False) -> dict:
    """Write the export folder; returns what was written and, with onnx, the check."""
    from safetensors.torch import save_file

    predictor = Predictor.load(checkpoint, weights=weights, device="cpu")
    model = predictor.model
    os.makedirs(out_dir, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    weights_path = os.path.join(out_dir, EXPORT_WEIGHTS)
    save_file(state, weights_path)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(weights_path, 0o666 & ~umask)  # safetensors writes 0600; an export is meant to be shared
    config = {
        "format": EXPORT_FORMAT,
        "camodet_version": __version__,
        "model": asdict(model.cfg),
        "img_size": predictor.img_size,
        "source": os.path.abspath(checkpoint),
        "weights": weights,
        # the backbone's own statistics, as the weights were trained with (0..255 scale)
        "input": {
            "layout": "NCHW RGB, (pixel 0..255 - mean) / std",
            "mean": [v * 255.0 for v in predictor.norm.mean],
            "std": [v * 255.0 for v in predictor.norm.std],
            "size": [predictor.img_size, predictor.img_size],
        },
        "output": "probability map (N, 1, H, W) at the input size; resize to the image's size",
    }
    with open(os.path.join(out_dir, EXPORT_CONFIG), "w") as fh:
        json.dump(config, fh, indent=2)
    info = {"files": [EXPORT_WEIGHTS, EXPORT_CONFIG]}
    if onnx:
        info["onnx_max_abs_diff"] = export_onnx(model, predictor.img_size, os.path.join(out_dir, ONNX_FILE))
        info["files"].append(ONNX_FILE)
    return info


def export_onnx(model: torch.nn.Module, img_size: int, path: str) -> float:
    """Export with a dynamic batch dimension, then compare with PyTorch in onnxruntime;
    returns the max abs difference of the probabilities (raises above ONNX_TOLERANCE)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError(
            "--onnx needs onnx, onnxscript and onnxruntime: pip install 'camodet[export]'"
        ) from None
    head = ProbabilityHead(model).eval()
    example = torch.randn(2, 3, img_size, img_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    chatter = io.StringIO()
    quiet = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):  # it narrates every pass
        torch.onnx.export(
            head,
            (example,),
            path,
            input_names=["image"],
            output_names=["probability"],
            dynamic_shapes={"image": {0: batch}},
            dynamo=True,
            external_data=False,
        )
    for q, level in zip(quiet, levels):
        q.setLevel(level)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    worst = 0.0
    for n in (1, 3):
        x = torch.randn(n, 3, img_size, img_size, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            want = head(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        worst = max(worst, float(np.abs(got - want).max()))
    if worst > ONNX_TOLERANCE:
        raise ExportError(
            f"{path}: ONNX Runtime differs from PyTorch by {worst:.2e} (> {ONNX_TOLERANCE}); "
            f"the ONNX file is not trustworthy for this model"
        )
    return worst
