"""`moe`, the reference workflow's decoder: top-down multi-scale fusion with mixture-of-experts
blocks at the coarse scales (one expert per block is a plain residual block, no routing)."""

import torch
import torch.nn.functional as F
from torch import nn

from ...config import ModelConfig
from ..experts import conv_norm_act
from ..moe import MoEBlock, Routing
from .base import Decoder, DecoderOutput, pyramid_levels

MOE_MIN_REDUCTION = 16  # MoE blocks sit at 1/16 and coarser, where they cost little


class MoEDecoder(Decoder):
    """Lateral 1x1 convs, then from the deepest level down: upsample, concatenate with the
    lateral, fuse (3x3), and a mixture-of-experts block at reductions >= 16; a 3x3 + 1x1 head on
    the finest map and a 1x1 side head on each coarser one (deep supervision)."""

    def __init__(self, channels: list[int], reductions: list[int], cfg: ModelConfig):
        super().__init__()
        c = cfg.decoder_channels
        self.levels = pyramid_levels(reductions)
        self.reductions = [reductions[i] for i in self.levels]
        # The construction order (and so the random initialisation) is that of the decoder and
        # detector heads before decoders were pluggable: a seeded run computes what it did.
        self.lateral = nn.ModuleList(conv_norm_act(channels[i], c, k=1) for i in self.levels)
        self.fuse = nn.ModuleList(conv_norm_act(2 * c, c) for _ in self.levels[:-1])
        self.moe = nn.ModuleDict(
            {
                str(j): MoEBlock(c, cfg.num_experts, cfg.top_k, cfg.gating)
                for j, r in enumerate(self.reductions)
                if r >= MOE_MIN_REDUCTION
            }
        )
        self.head = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.GELU(), nn.Conv2d(c, 1, 1))
        self.add_side_heads(c, len(self.levels) - 1 if cfg.deep_supervision else 0)

    def forward(self, pyramids: list[list[torch.Tensor]]) -> DecoderOutput:
        """Decode the one pyramid from the deepest level up; the head reads the finest map."""
        feats = pyramids[0]
        lat = [conv(feats[i]) for conv, i in zip(self.lateral, self.levels)]
        routings: list[Routing] = []
        x = lat[-1]
        decoded = []
        for j in range(len(lat) - 1, -1, -1):
            if j < len(lat) - 1:
                up = F.interpolate(x, size=lat[j].shape[-2:], mode="bilinear", align_corners=False)
                x = self.run(self.fuse[j], torch.cat([up, lat[j]], 1))
            if str(j) in self.moe:
                x, routing = self.run(self.moe[str(j)], x)
                routings.append(routing)
            decoded.append(x)
        decoded = decoded[::-1]
        sides = [h(d) for h, d in zip(self.side_heads, decoded[1:])]
        return DecoderOutput(self.head(decoded[0]), sides, routings)

    @staticmethod
    def describe(cfg: ModelConfig) -> str:
        if cfg.num_experts == 1:
            return "a top-down multi-scale decoder (one expert per block: no mixture of experts)"
        return f"a mixture-of-experts decoder with {cfg.num_experts} experts"
