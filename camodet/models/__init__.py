from .backbone import Backbone, BackboneError, check_backbone
from .detector import CamoDetector, ModelOutput, build_model

__all__ = ["Backbone", "BackboneError", "CamoDetector", "ModelOutput", "build_model", "check_backbone"]
