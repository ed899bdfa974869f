"""The plain-FPN yardstick of the benchmarks (step_time.py, quality_real.py's baseline): camodet's
own `--decoder fpn` (camodet/models/decoders/fpn.py) on the backbone, returning the logits alone,
with the textbook loss (BCE + soft IoU): no boundary weighting, no deep supervision, no MoE."""

import torch
import torch.nn.functional as F
from torch import nn

from camodet.config import ModelConfig
from camodet.models import build_model


class PlainFPN(nn.Module):
    """CamoDetector with the fpn decoder, called as a plain module: image -> logits."""

    def __init__(self, backbone: str, channels: int = 64, pretrained_path: str | None = None):
        super().__init__()
        self.detector = build_model(
            ModelConfig(
                backbone=backbone, decoder="fpn", decoder_channels=channels, pretrained_path=pretrained_path
            )
        )
        self.backbone = self.detector.backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.detector(x).logits


def bce_soft_iou(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE + soft IoU (per image, +1 smoothed as the structure loss's IoU term)."""
    bce = F.binary_cross_entropy_with_logits(logits, mask)
    prob = torch.sigmoid(logits)
    inter = (prob * mask).sum((2, 3))
    union = (prob + mask).sum((2, 3)) - inter
    return bce + (1 - (inter + 1) / (union + 1)).mean()
