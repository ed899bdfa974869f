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
