"""Decoders, pluggable behind one contract (base.py): backbone features in, mask logits and side
logits out. `--decoder NAME` (ModelConfig.decoder, recorded in every checkpoint) picks one:

- moe: the reference workflow's top-down decoder with mixture-of-experts blocks (the default);
- fpn: the plain feature pyramid, the benchmarks' yardstick;
- sinet: search and identify with group-reversal attention, in the manner of SINet-V2;
- zoom: the image at three scales through one backbone, merged, in the manner of ZoomNet/ZoomNeXt.

What each costs and when it wins: README, "Decoders"; the measurements: benchmarks/RESULTS.md."""

from ...config import DECODER_NAMES, ModelConfig
from .base import Decoder, DecoderOutput
from .fpn import FPNDecoder
from .moe import MoEDecoder
from .sinet import SINetDecoder
from .zoom import ZoomDecoder

DECODERS: dict[str, type[Decoder]] = {
    "moe": MoEDecoder,
    "fpn": FPNDecoder,
    "sinet": SINetDecoder,
    "zoom": ZoomDecoder,
}
assert tuple(DECODERS) == DECODER_NAMES  # the config's choices name exactly these


def build_decoder(channels: list[int], reductions: list[int], cfg: ModelConfig) -> Decoder:
    return DECODERS[cfg.decoder](channels, reductions, cfg)


def describe_decoder(cfg: ModelConfig) -> str:
    """The decoder in words, from the config alone (model cards, summaries)."""
    return DECODERS[cfg.decoder].describe(cfg)


def size_multiple(cfg: ModelConfig) -> int:
    """How many backbone strides an input side must be a multiple of for this decoder."""
    return DECODERS[cfg.decoder].size_multiple


__all__ = ["DECODERS", "Decoder", "DecoderOutput", "build_decoder", "describe_decoder", "size_multiple"]
