"""The old path of exporting (safetensors, ONNX), now camodet.serving.export; kept so that
`from camodet.export import ...` keeps working."""

from .serving.export import *  # noqa: F403
