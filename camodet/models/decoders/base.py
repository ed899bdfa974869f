"""The contract every decoder keeps, in the manner of segmentation_models_pytorch's decoders:
backbone features in, mask logits and side logits out; the backbone, its groups and the freezing
contract belong to the detector and are never touched here.

A decoder is built from the backbone's `channels` and `reductions` (timm's feature_info, finest
first) and the ModelConfig. Its forward takes one feature pyramid per entry of `input_scales`
(the detector runs the one shared backbone over the image at each scale; most decoders ask for
the image as it is) and returns a DecoderOutput at any resolution: the detector resizes every map
to the input size."""

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

# Side outputs of the top-down decoders, coarser each, get half the weight of the previous.
SIDE_WEIGHT_DECAY = 0.5


def decaying_side_weights(n: int) -> list[float]:
    """0.5, 0.25, ... for n side outputs, finest first."""
    return [SIDE_WEIGHT_DECAY ** (k + 1) for k in range(n)]


def pyramid_levels(reductions: list[int]) -> list[int]:
    """The feature levels a decoder reads: reduction 4 and coarser (a stride-2 stem is left out)."""
    return [i for i, r in enumerate(reductions) if r >= 4]


@dataclass
class DecoderOutput:
    """What a decoder hands back: logits (B, 1, h, w), side logits for deep supervision (finest
    first, each with its weight in `Decoder.side_weights`), and the MoE routings (none elsewhere)."""

    logits: torch.Tensor
    side_logits: list = field(default_factory=list)
    routings: list = field(default_factory=list)


class Decoder(nn.Module):
    """Base of every decoder. Subclasses set `side_weights` (one per side output they return when
    deep supervision is on) and may ask for the image at other scales through `input_scales`, as
    (numerator, denominator) pairs so that a traced graph computes the sizes in whole numbers; such
    a decoder needs input sides that are multiples of `size_multiple` backbone strides."""

    input_scales: tuple[tuple[int, int], ...] = ((1, 1),)
    size_multiple: int = 1

    def __init__(self):
        super().__init__()
        self.grad_checkpointing = False
        self.side_weights: list[float] = []

    def add_side_heads(self, channels: int, n: int) -> None:
        """The top-down decoders' deep supervision: a 1x1 head on each of the n maps coarser than
        the finest, weighted 0.5, 0.25, ..."""
        self.side_heads = nn.ModuleList(nn.Conv2d(channels, 1, 1) for _ in range(n))
        self.side_weights = decaying_side_weights(n)

    def run(self, block: nn.Module, *args):
        """block(*args), its activations recomputed in backward under gradient checkpointing."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, pyramids: list[list[torch.Tensor]]) -> DecoderOutput:
        raise NotImplementedError
