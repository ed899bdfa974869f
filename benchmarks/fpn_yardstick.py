"""A plain FPN segmentation head, the yardstick for camodet's decoder in step_time.py: what
a training step costs on the same backbone with the textbook head and loss and nothing else.

Lateral 1x1 convs to `channels`, top-down nearest upsampling + sum, a 3x3 smoothing conv
per level, every level upsampled to the finest and concatenated, a 3x3 conv-norm-act and a
1x1 to one logit map at input size; loss BCE + soft IoU. Same width and building blocks
(GroupNorm + GELU) as camodet's decoder, so the difference is the design, not the width.
Not a product model: it has no MoE, no deep supervision and no boundary weighting."""

import torch
import torch.nn.functional as F
from torch import nn

from camodet.models import Backbone
from camodet.models.experts import conv_norm_act


class PlainFPN(nn.Module):
    def __init__(self, backbone: str, channels: int = 64, pretrained_path: str | None = None):
        super().__init__()
        self.backbone = Backbone(backbone, pretrained_path=pretrained_path)
        self.levels = [i for i, r in enumerate(self.backbone.reductions) if r >= 4]  # as camodet's decoder
        self.lateral = nn.ModuleList(nn.Conv2d(self.backbone.channels[i], channels, 1) for i in self.levels)
        self.smooth = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in self.levels)
        self.head = nn.Sequential(
            conv_norm_act(len(self.levels) * channels, channels), nn.Conv2d(channels, 1, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        lat = [conv(feats[i]) for conv, i in zip(self.lateral, self.levels)]
        for j in range(len(lat) - 2, -1, -1):
            lat[j] = lat[j] + F.interpolate(lat[j + 1], size=lat[j].shape[-2:], mode="nearest")
        pyramid = [conv(p) for conv, p in zip(self.smooth, lat)]
        size = pyramid[0].shape[-2:]
        fused = torch.cat(
            [pyramid[0]]
            + [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid[1:]],
            1,
        )
        return F.interpolate(self.head(fused), size=x.shape[-2:], mode="bilinear", align_corners=False)


def bce_soft_iou(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE + soft IoU (per image, +1 smoothed as the structure loss's IoU term)."""
    bce = F.binary_cross_entropy_with_logits(logits, mask)
    prob = torch.sigmoid(logits)
    inter = (prob * mask).sum((2, 3))
    union = (prob + mask).sum((2, 3)) - inter
    return bce + (1 - (inter + 1) / (union + 1)).mean()
