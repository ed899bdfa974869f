"""timm, imported without Weights & Biases.

timm's `timm.utils.summary` imports wandb whenever it is installed, for a logging helper camodet
never calls. Every camodet process that builds a model imports timm, so with wandb installed (a
`camodet[wandb]` user's machine) each CLI start, torchrun worker and sweep trial paid ~0.7 s for
it. camodet's own tracker imports wandb itself when `--tracker wandb` asks for it. Import timm
from here: `from .timm_lib import timm`."""

import sys

if "timm" not in sys.modules and "wandb" not in sys.modules:
    sys.modules["wandb"] = None  # `import wandb` raises ImportError, which timm catches
    try:
        import timm.utils  # noqa: F401  (the module that tries wandb, imported by timm itself)
    finally:
        del sys.modules["wandb"]

import timm  # noqa: E402

__all__ = ["timm"]
