"""Top-down multi-scale decoder with mixture-of-experts blocks at the coarse scales."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .experts import conv_norm_act
from .moe import MoEBlock, Routing


class Decoder(nn.Module):
    """Consumes backbone features of reduction >= 4 (deepest last) and returns the
    decoded maps finest first. MoE blocks sit at reductions >= moe_min_reduction."""

    def __init__(
        self,
        in_channels: list[int],
        reductions: list[int],
        channels: int,
        num_experts: int,
        top_k: int,
        gating: str,
        moe_min_reduction: int = 16,
    ):
        super().__init__()
        self.levels = [i for i, r in enumerate(reductions) if r >= 4]
        self.reductions = [reductions[i] for i in self.levels]
        self.lateral = nn.ModuleList(conv_norm_act(in_channels[i], channels, k=1) for i in self.levels)
        self.fuse = nn.ModuleList(conv_norm_act(2 * channels, channels) for _ in self.levels[:-1])
        self.moe = nn.ModuleDict(
            {
                str(j): MoEBlock(channels, num_experts, top_k, gating)
                for j, r in enumerate(self.reductions)
                if r >= moe_min_reduction
            }
        )
        self.out_channels = channels
        self.grad_checkpointing = False

    def _run(self, block: nn.Module, *args):
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[Routing]]:
        lat = [conv(feats[i]) for conv, i in zip(self.lateral, self.levels)]
        routings: list[Routing] = []
        x = lat[-1]
        decoded = []
        for j in range(len(lat) - 1, -1, -1):
            if j < len(lat) - 1:
                up = F.interpolate(x, size=lat[j].shape[-2:], mode="bilinear", align_corners=False)
                x = self._run(self.fuse[j], torch.cat([up, lat[j]], 1))
            if str(j) in self.moe:
                x, routing = self._run(self.moe[str(j)], x)
                routings.append(routing)
            decoded.append(x)
        return decoded[::-1], routings
