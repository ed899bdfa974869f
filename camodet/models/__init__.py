"""Models: the timm backbone wrapper and its weights, experts and the MoE router, the decoder,
the detector, the loss (losses.py) and the device / AMP choice (device.py). Imports config and
data (normalization) only; never the engine."""

from .backbone import Backbone, BackboneError, backbone_normalization, check_backbone
from .detector import CamoDetector, ModelOutput, build_model

__all__ = [
    "Backbone",
    "BackboneError",
    "backbone_normalization",
    "CamoDetector",
    "ModelOutput",
    "build_model",
    "check_backbone",
]
