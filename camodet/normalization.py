"""Input normalisation: the per-channel mean and std a backbone's weights were trained with.

timm carries them in each model's pretrained config (ImageNet statistics for most, 0.5/0.5 for
tf_efficientnet_lite* and inception-style models, CLIP's own for CLIP towers); feeding a
pretrained backbone other statistics shifts every activation of a frozen stage 1. One small
value, resolved once per model and carried to the datasets, the Predictor, exports, TensorBoard
and the report, and saved in checkpoints. No torch here: data, models and export share it."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float]  # per RGB channel, on timm's 0..1 pixel scale
    std: tuple[float, float, float]

    def __post_init__(self):
        mean, std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"input normalisation needs 3 means and 3 positive stds, got {mean}, {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 RGB (uint8 or float 0..255) -> 3xHxW float32 network input."""
        mean = np.array(self.mean, np.float32) * 255.0
        std = np.array(self.std, np.float32) * 255.0
        return ((image.astype(np.float32) - mean) / std).transpose(2, 0, 1).copy()

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
