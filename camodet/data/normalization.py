"""Input normalisation: the per-channel mean and std a backbone's weights were trained with.

timm carries them in each model's pretrained config (ImageNet statistics for most, 0.5/0.5 for
tf_efficientnet_lite* and inception-style models, CLIP's own for CLIP towers); feeding a
pretrained backbone other statistics shifts every activation of a frozen stage 1. One small
value, resolved once per model and carried to the datasets, the Predictor, exports, TensorBoard
and the report, and saved in checkpoints. No torch here: data, models and export share it."""

from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np


class ColourMap(NamedTuple):
    """A linear map of RGB pixels on the 0..255 scale, `matrix @ rgb + offset`, whose result is
    clipped to 0..255 (the training colour jitter)."""

    matrix: np.ndarray  # (3, 3)
    offset: np.ndarray  # (3,)


@dataclass(frozen=True)
class Normalization:
    """The per-channel mean and std that a backbone's inputs are normalised with."""

    mean: tuple[float, float, float]  # per RGB channel, on timm's 0..1 pixel scale
    std: tuple[float, float, float]

    def __post_init__(self):
        mean, std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"input normalisation needs 3 means and 3 positive stds, got {mean}, {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def apply(self, image: np.ndarray, colour: ColourMap | None = None) -> np.ndarray:
        """HxWx3 RGB (uint8 or float 0..255) -> 3xHxW float32 network input. With `colour`, that
        map (clipped to 0..255) comes first; both are linear, so they run as one 3x3 product and
        a clip on the normalised scale: a few passes over the pixels instead of a dozen (the
        training transform's largest cost after decoding)."""
        mean = np.array(self.mean, np.float32) * 255.0
        std = np.array(self.std, np.float32) * 255.0
        if colour is None:
            return ((image.astype(np.float32) - mean) / std).transpose(2, 0, 1).copy()
        mean, std = mean.astype(np.float64), std.astype(np.float64)
        affine = np.hstack([colour.matrix / std[:, None], ((colour.offset - mean) / std)[:, None]])
        # cv2.transform rather than a numpy matmul: BLAS threads in DataLoader workers spin on
        # the cores the training needs (2 workers ran slower than 0).
        out = cv2.transform(np.asarray(image, np.float32), affine).transpose(2, 0, 1).copy()
        lo, hi = (-mean / std).astype(np.float32), ((255 - mean) / std).astype(np.float32)
        return np.clip(out, lo[:, None, None], hi[:, None, None], out=out)

    def undo(self, chw: np.ndarray) -> np.ndarray:
        """3xHxW network input -> HxWx3 uint8 RGB (for image panels)."""
        rgb = chw.transpose(1, 2, 0) * (np.array(self.std) * 255.0) + np.array(self.mean) * 255.0
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalization":
        return cls(tuple(d["mean"]), tuple(d["std"]))

    @classmethod
    def of_checkpoint(cls, ckpt: dict) -> "Normalization":
        """What a checkpoint's model was trained with; one written before checkpoints carried it
        was trained with ImageNet statistics, whatever its backbone."""
        return cls.from_dict(ckpt["normalization"]) if "normalization" in ckpt else IMAGENET

    def __str__(self) -> str:
        return f"mean {', '.join(f'{v:g}' for v in self.mean)}; std {', '.join(f'{v:g}' for v in self.std)}"


IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
