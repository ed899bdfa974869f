"""Expert types of the mixture-of-experts block. Each maps C -> C channels at the
same resolution and is built only from ops that export to ONNX (no FFT)."""

import math

import torch
import torch.nn.functional as F
from torch import nn


def conv_norm_act(
    cin: int, cout: int, k: "int | tuple[int, int]" = 3, dilation: int = 1, groups: int = 1
) -> nn.Sequential:
    """A 'same' conv (k square, or (kh, kw)), GroupNorm and GELU."""
    # GroupNorm, not BatchNorm: stage 2 often runs at micro-batch 2, where batch statistics are noise.
    # Up to 8 groups that divide the channels (min(8, cout) wherever cout is a multiple of 8 or below it).
    kh, kw = (k, k) if isinstance(k, int) else k
    padding = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, (kh, kw), padding=padding, dilation=dilation, groups=groups, bias=False),
        nn.GroupNorm(math.gcd(8, cout), cout),
        nn.GELU(),
    )


class DilatedContext(nn.Module):
    """Texture and context at two dilation rates."""

    def __init__(self, c: int):
        super().__init__()
        self.d2 = conv_norm_act(c, c // 2, dilation=2)
        self.d3 = conv_norm_act(c, c // 2, dilation=3)
        self.fuse = conv_norm_act(c, c, k=1)

    def forward(self, x):
        return self.fuse(torch.cat([self.d2(x), self.d3(x)], 1))


def same_conv_on_reach(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for a stride-1 'same' conv with zero padding, using only the taps that can reach
    the map. On a map smaller than the kernel's span the outer taps multiply padding zeros
    alone: leaving them out gives the same output and the same gradients (zero for those
    taps) for a fraction of the work. LargeKernel's 7x7 dilated-3 conv spans 19 px; at 1/32
    of a 128 px input the map is 4 px wide and 40 of the 49 taps see only padding, and the
    CPU's dilated depthwise backward cost as much as a whole expert."""
    if torch.compiler.is_exporting():  # one graph for every input size (ONNX: dynamic H and W),
        return conv(x)  # so the full kernel: the same output, pads fixed in the graph
    (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
    rh, rw = kh // 2, kw // 2
    th, tw = min(rh, (x.shape[-2] - 1) // dh), min(rw, (x.shape[-1] - 1) // dw)
    if (th, tw) == (rh, rw):
        return conv(x)
    weight = conv.weight[:, :, rh - th : rh + th + 1, rw - tw : rw + tw + 1]
    return F.conv2d(x, weight, conv.bias, 1, (th * dh, tw * dw), conv.dilation, conv.groups)


class LargeKernel(nn.Module):
    """Large receptive field cheaply: depthwise 5x5 then depthwise 7x7 dilated 3."""

    def __init__(self, c: int):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 5, padding=2, groups=c)
        self.dw_dilated = nn.Conv2d(c, c, 7, padding=9, dilation=3, groups=c)
        self.pw = conv_norm_act(c, c, k=1)

    def forward(self, x):
        return self.pw(same_conv_on_reach(self.dw_dilated, self.dw(x)))


class Edge(nn.Module):
    """Boundary cues: the high-pass residual (x - local mean) next to x."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = conv_norm_act(2 * c, c)

    def forward(self, x):
        high = x - F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return self.conv(torch.cat([x, high], 1))


class Frequency(nn.Module):
    """Low/high frequency bands processed apart (a spatial stand-in for an FFT that exports)."""

    def __init__(self, c: int):
        super().__init__()
        self.low = conv_norm_act(c, c // 2)
        self.high = conv_norm_act(c, c // 2)
        self.fuse = conv_norm_act(c, c, k=1)

    def forward(self, x):
        low = F.interpolate(
            F.avg_pool2d(x, 2, ceil_mode=True), size=x.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.fuse(torch.cat([self.low(low), self.high(x - low)], 1))


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation over channels, then a 3x3 conv."""

    def __init__(self, c: int, reduction: int = 4):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(c, c // reduction), nn.GELU(), nn.Linear(c // reduction, c))
        self.conv = conv_norm_act(c, c)

    def forward(self, x):
        w = torch.sigmoid(self.fc(x.mean((2, 3))))[:, :, None, None]
        return self.conv(x * w)


class SpatialAttention(nn.Module):
    """Where to look: a 7x7 map from channel mean and max."""

    def __init__(self, c: int):
        super().__init__()
        self.att = nn.Conv2d(2, 1, 7, padding=3)
        self.conv = conv_norm_act(c, c)

    def forward(self, x):
        desc = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return self.conv(x * torch.sigmoid(self.att(desc)))


class PyramidContext(nn.Module):
    """Multi-scale pooled context (SPPF-style cascade of average pools)."""

    def __init__(self, c: int):
        super().__init__()
        self.reduce = conv_norm_act(c, c // 4, k=1)
        self.fuse = conv_norm_act(c, c, k=1)

    def forward(self, x):
        feats = [self.reduce(x)]
        for _ in range(3):
            feats.append(F.avg_pool2d(feats[-1], 5, stride=1, padding=2, count_include_pad=False))
        return self.fuse(torch.cat(feats, 1))


EXPERT_TYPES = (
    DilatedContext,
    LargeKernel,
    Edge,
    Frequency,
    ChannelAttention,
    SpatialAttention,
    PyramidContext,
)


def make_expert(index: int, channels: int) -> nn.Module:
    """Expert `index`; types cycle when there are more experts than types."""
    return EXPERT_TYPES[index % len(EXPERT_TYPES)](channels)
