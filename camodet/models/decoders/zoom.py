"""`zoom`, mixed-scale zooming in the manner of ZoomNet / ZoomNeXt (Pang et al., CVPR 2022 and
TPAMI 2024), built from the papers' description:

- the image at 0.5x, 1x and 1.5x through the one shared backbone (three feature pyramids);
- per level, scale merging: the 1.5x features max- and mean-pooled down, the 0.5x ones upsampled,
  each through its own 3x3, and an attention over the three scales (a softmax per pixel) that
  weighs them into one map at the main scale;
- a hierarchical decoder from the deepest level down: upsample and add, then a mixed-scale unit
  (the channels in groups, each group a 3x3 at its own dilation that also takes the previous
  group's carry, gated, fused by a 1x1, residual).

Its uncertainty-aware loss term (ZoomNet's UAL, which pushes probabilities away from 0.5) is the
training option --uncertainty-loss-weight and works with any decoder. The three pyramids cost
about 3.5x the backbone's compute of one image; at 0.5x and 1.5x an input side must stay a whole
number of backbone strides, so a zoom model takes sides that are multiples of 64 px."""

import torch
import torch.nn.functional as F
from torch import nn

from ...config import ModelConfig
from ..experts import conv_norm_act
from .base import Decoder, DecoderOutput, pyramid_levels

MIXED_SCALE_GROUPS = 4


class ScaleMerge(nn.Module):
    """Three scales' features of one level -> one map at the main scale."""

    def __init__(self, c: int):
        super().__init__()
        self.small = conv_norm_act(c, c)
        self.main = conv_norm_act(c, c)
        self.large = conv_norm_act(c, c)
        self.attend = nn.Sequential(conv_norm_act(3 * c, c, k=1), nn.Conv2d(c, 3, 1))

    def forward(self, small: torch.Tensor, main: torch.Tensor, large: torch.Tensor) -> torch.Tensor:
        size = main.shape[-2:]
        # Down from 1.5x: a 3x3 max and mean keep what a plain resize would blur or drop.
        large = F.max_pool2d(large, 3, 1, 1) + F.avg_pool2d(large, 3, 1, 1, count_include_pad=False)
        large = self.large(F.interpolate(large, size=size, mode="bilinear", align_corners=False))
        small = self.small(F.interpolate(small, size=size, mode="bilinear", align_corners=False))
        main = self.main(main)
        weights = self.attend(torch.cat([small, main, large], 1)).softmax(1)
        return weights[:, 0:1] * small + weights[:, 1:2] * main + weights[:, 2:3] * large


class MixedScale(nn.Module):
    """Groups of channels, each a 3x3 at dilation 1, 2, ... over its group plus the previous
    group's carry; each yields a value, a gate and the next carry; the gated values are fused."""

    def __init__(self, c: int, groups: int = MIXED_SCALE_GROUPS):
        super().__init__()
        while c % groups:
            groups -= 1
        self.groups = groups
        cg = c // groups
        self.convs = nn.ModuleList(conv_norm_act(cg, 3 * cg, dilation=g + 1) for g in range(groups))
        self.fuse = conv_norm_act(c, c, k=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        carry, outs = None, []
        for conv, part in zip(self.convs, x.chunk(self.groups, 1)):
            value, gate, carry = conv(part if carry is None else part + carry).chunk(3, 1)
            outs.append(value * torch.sigmoid(gate))
        return x + self.fuse(torch.cat(outs, 1))


class ZoomDecoder(Decoder):
    """Shared lateral 1x1s for the three pyramids, a ScaleMerge per level, then top-down: add the
    upsampled deeper map and a MixedScale unit; a 3x3 + 1x1 head on the finest map and a 1x1 side
    head on each coarser one (deep supervision, weights 0.5, 0.25, ...)."""

    input_scales = ((1, 2), (1, 1), (3, 2))
    size_multiple = 2  # 0.5x of a side must be a whole number of strides

    def __init__(self, channels: list[int], reductions: list[int], cfg: ModelConfig):
        super().__init__()
        c = cfg.decoder_channels
        self.levels = pyramid_levels(reductions)
        self.lateral = nn.ModuleList(conv_norm_act(channels[i], c, k=1) for i in self.levels)
        self.merge = nn.ModuleList(ScaleMerge(c) for _ in self.levels)
        self.mix = nn.ModuleList(MixedScale(c) for _ in self.levels)
        self.head = nn.Sequential(conv_norm_act(c, c), nn.Conv2d(c, 1, 1))
        self.add_side_heads(c, len(self.levels) - 1 if cfg.deep_supervision else 0)

    def forward(self, pyramids: list[list[torch.Tensor]]) -> DecoderOutput:
        """Merge the three scales per level, then decode from the deepest level up."""
        small, main, large = ([lat(p[i]) for lat, i in zip(self.lateral, self.levels)] for p in pyramids)
        fused = [self.run(m, s, x, b) for m, s, x, b in zip(self.merge, small, main, large)]
        x, decoded = None, []
        for j in range(len(fused) - 1, -1, -1):
            x = (
                fused[j]
                if x is None
                else fused[j]
                + F.interpolate(x, size=fused[j].shape[-2:], mode="bilinear", align_corners=False)
            )
            x = self.run(self.mix[j], x)
            decoded.append(x)
        decoded = decoded[::-1]
        sides = [h(d) for h, d in zip(self.side_heads, decoded[1:])]
        return DecoderOutput(self.run(self.head, decoded[0]), sides)

    @staticmethod
    def describe(cfg: ModelConfig) -> str:
        return "a mixed-scale zoom decoder in the manner of ZoomNet/ZoomNeXt (0.5x, 1x, 1.5x)"
