"""`sinet`, search and identify in the manner of SINet-V2 (Fan et al., "Concealed Object
Detection", TPAMI 2022), built from the paper's description:

- search: texture-enhanced modules (receptive-field blocks of 1xk, kx1 and dilated 3x3 branches)
  on the three deepest features, and a neighbour-connection decoder that multiplies each level by
  its upsampled deeper neighbours into a coarse map at the shallowest of the three;
- identify: from the deepest level to the shallowest, group-reversal attention refines the map:
  the reverse of the current estimate (1 - sigmoid) is interleaved with groups of the level's
  channels (1, 8, then one channel a group), convolved, and a residual map is added to the prior.

Unlike the paper, which stops at 1/8, the refinement also runs at the 1/4 level, so the map it
hands back is at 1/4 like the other decoders'. Deep supervision trains every earlier map (the
coarse one and each refinement's) with the same weight as the final one, as the paper does."""

import torch
import torch.nn.functional as F
from torch import nn

from ...config import ModelConfig
from ..experts import conv_norm_act
from .base import Decoder, DecoderOutput, pyramid_levels

REVERSAL_GROUPS = (1, 8)  # then one group per channel (the paper's weak, medium and strong GRA)


def resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class TextureEnhanced(nn.Module):
    """Four branches (a 1x1; then for k = 3, 5, 7: 1x1, 1xk, kx1, 3x3 at dilation k) concatenated
    and fused by a 3x3, plus a 1x1 shortcut of the input."""

    def __init__(self, cin: int, c: int):
        super().__init__()
        self.branches = nn.ModuleList([conv_norm_act(cin, c, k=1)])
        for k in (3, 5, 7):
            self.branches.append(
                nn.Sequential(
                    conv_norm_act(cin, c, k=1),
                    conv_norm_act(c, c, k=(1, k)),
                    conv_norm_act(c, c, k=(k, 1)),
                    conv_norm_act(c, c, dilation=k),
                )
            )
        self.fuse = conv_norm_act(4 * c, c)
        self.shortcut = conv_norm_act(cin, c, k=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([b(x) for b in self.branches], 1)) + self.shortcut(x)


class NeighbourConnection(nn.Module):
    """The coarse map from three texture-enhanced levels (shallow f2, middle f3, deep f4): each
    level is multiplied by its deeper neighbours, upsampled, then concatenated from deep to
    shallow; the map comes out at f2's resolution."""

    def __init__(self, c: int):
        super().__init__()
        self.deep_to_mid = conv_norm_act(c, c)
        self.deep_to_shallow = conv_norm_act(c, c)
        self.mid_to_shallow = conv_norm_act(c, c)
        self.deep_beside_mid = conv_norm_act(c, c)
        self.mid_beside_shallow = conv_norm_act(2 * c, 2 * c)
        self.mid = conv_norm_act(2 * c, 2 * c)
        self.shallow = conv_norm_act(3 * c, 3 * c)
        self.out = nn.Sequential(conv_norm_act(3 * c, 3 * c), nn.Conv2d(3 * c, 1, 1))

    def forward(self, f2: torch.Tensor, f3: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        x3 = f3 * self.deep_to_mid(resize_to(f4, f3))
        x2 = f2 * self.mid_to_shallow(resize_to(f3, f2)) * self.deep_to_shallow(resize_to(f4, f2))
        x3 = self.mid(torch.cat([x3, self.deep_beside_mid(resize_to(f4, f3))], 1))
        x2 = self.shallow(torch.cat([x2, self.mid_beside_shallow(resize_to(x3, f2))], 1))
        return self.out(x2)


class GroupReversal(nn.Module):
    """One group-reversal attention: the level's channels in `groups` groups, the reverse map
    after each group, a 3x3 over the interleaved stack added back to the features, and a 3x3
    score added to the reverse map."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.groups = groups
        self.conv = conv_norm_act(c + groups, c)
        self.score = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grouped = x.unflatten(1, (self.groups, -1))  # (B, g, C/g, H, W)
        reverse = y.unsqueeze(1).expand(-1, self.groups, -1, -1, -1)  # (B, g, 1, H, W)
        x = x + self.conv(torch.cat([grouped, reverse], 2).flatten(1, 2))
        return x, y + self.score(x)


class ReverseStage(nn.Module):
    """Refine a prior map at one level: reduce the level's features, reverse the prior, three
    group-reversal attentions (1, 8, then C groups), the result added to the prior."""

    def __init__(self, cin: int, c: int):
        super().__init__()
        self.reduce = conv_norm_act(cin, c, k=1)
        self.attend = nn.ModuleList(GroupReversal(c, g) for g in (*REVERSAL_GROUPS, c))

    def forward(self, feat: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        x = self.reduce(feat)
        prior = resize_to(prior, x)
        y = 1 - torch.sigmoid(prior)
        for gra in self.attend:
            x, y = gra(x, y)
        return prior + y


class SINetDecoder(Decoder):
    """Texture-enhanced modules on the three deepest levels, the neighbour-connection decoder's
    coarse map, then a reverse stage per level from the deepest to the shallowest (1/4)."""

    def __init__(self, channels: list[int], reductions: list[int], cfg: ModelConfig):
        super().__init__()
        c = cfg.decoder_channels
        self.levels = pyramid_levels(reductions)
        if len(self.levels) < 3:
            raise ValueError(
                f"the sinet decoder needs 3 feature levels at 1/4 or coarser (got {len(self.levels)})"
            )
        # The search half at half the width, as the paper's 32 channels beside its 64.
        self.texture = nn.ModuleList(TextureEnhanced(channels[i], c // 2) for i in self.levels[-3:])
        self.search = NeighbourConnection(c // 2)
        self.identify = nn.ModuleList(ReverseStage(channels[i], c) for i in self.levels)
        self.deep_supervision = cfg.deep_supervision
        self.side_weights = [1.0] * len(self.levels) if cfg.deep_supervision else []

    def forward(self, pyramids: list[list[torch.Tensor]]) -> DecoderOutput:
        feats = [pyramids[0][i] for i in self.levels]
        f2, f3, f4 = (self.run(t, f) for t, f in zip(self.texture, feats[-3:]))
        maps = [self.run(self.search, f2, f3, f4)]
        for j in range(len(feats) - 1, -1, -1):
            maps.append(self.run(self.identify[j], feats[j], maps[-1]))
        # maps: coarse, then each level's refinement from the deepest; the last is the output.
        sides = maps[-2::-1] if self.deep_supervision else []
        return DecoderOutput(maps[-1], sides)

    @staticmethod
    def describe(cfg: ModelConfig) -> str:
        return "a search-and-identify decoder in the manner of SINet-V2 (group-reversal attention)"
