"""Models: the timm backbone wrapper and its weights, experts and the MoE router, the decoders
(decoders/: moe, fpn, sinet, zoom behind one contract), the detector, the loss (losses.py) and
the device / AMP choice (device.py). Imports config and
data (normalization) only; never the engine.

The names below load on first use (PEP 562): importing timm takes seconds on a small CPU, and the
commands that only need models.device (evaluate --preds-dir, and the metric worker processes it
spawns) should not pay for it."""

import importlib

_HOMES = {
    "Backbone": ".backbone",
    "BackboneError": ".backbone",
    "backbone_normalization": ".backbone",
    "check_backbone": ".backbone",
    "check_model": ".backbone",
    "CamoDetector": ".detector",
    "ModelOutput": ".detector",
    "build_model": ".detector",
}

__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name], __name__), name)
