"""The old path of the Predictor, now camodet.serving.predictor (and of the export format, now
camodet.serving.export_format); kept so that `from camodet.inference import ...` keeps working."""

from .serving.export_format import *  # noqa: F403
from .serving.predictor import *  # noqa: F403
