"""`fpn`, the plain feature pyramid: the yardstick every other decoder is measured against
(benchmarks' "plain FPN"), now a model like the others."""

import torch
import torch.nn.functional as F
from torch import nn

from ...config import ModelConfig
from ..experts import conv_norm_act
from .base import Decoder, DecoderOutput, pyramid_levels


class FPNDecoder(Decoder):
    """Lateral 1x1 convs, top-down nearest upsampling + sum, a 3x3 smoothing conv per level,
    every level upsampled to the finest and concatenated, a 3x3 conv-norm-act and a 1x1 to one
    logit map (Lin et al., 2017; the semantic-segmentation head of Kirillov et al., 2019, without
    its per-level upsampling stacks). Side heads: a 1x1 on each coarser smoothed level."""

    def __init__(self, channels: list[int], reductions: list[int], cfg: ModelConfig):
        super().__init__()
        c = cfg.decoder_channels
        self.levels = pyramid_levels(reductions)
        self.lateral = nn.ModuleList(nn.Conv2d(channels[i], c, 1) for i in self.levels)
        self.smooth = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in self.levels)
        self.head = nn.Sequential(conv_norm_act(len(self.levels) * c, c), nn.Conv2d(c, 1, 1))
        self.add_side_heads(c, len(self.levels) - 1 if cfg.deep_supervision else 0)

    def forward(self, pyramids: list[list[torch.Tensor]]) -> DecoderOutput:
        feats = pyramids[0]
        lat = [conv(feats[i]) for conv, i in zip(self.lateral, self.levels)]
        for j in range(len(lat) - 2, -1, -1):
            lat[j] = lat[j] + F.interpolate(lat[j + 1], size=lat[j].shape[-2:], mode="nearest")
        pyramid = [self.run(conv, p) for conv, p in zip(self.smooth, lat)]
        size = pyramid[0].shape[-2:]
        fused = torch.cat(
            [pyramid[0]]
            + [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid[1:]],
            1,
        )
        sides = [h(p) for h, p in zip(self.side_heads, pyramid[1:])]
        return DecoderOutput(self.run(self.head, fused), sides)

    @staticmethod
    def describe(cfg: ModelConfig) -> str:
        return "a plain feature-pyramid decoder (FPN)"
