"""CamoDetector: backbone + decoder + heads, with the freezing contract the
trainer relies on (frozen groups: requires_grad=False and modules in eval mode)."""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .backbone import Backbone
from .decoders import build_decoder


@dataclass
class ModelOutput:
    """Logits at the input size, side logits (deep supervision), MoE balance loss, usage."""

    logits: torch.Tensor  # (B, 1, H, W) at input size
    side_logits: list = field(default_factory=list)  # deep supervision, at input size
    aux_loss: torch.Tensor | None = None  # MoE balance (mean over blocks)
    expert_usage: list = field(default_factory=list)  # one (E,) tensor per MoE block


class CamoDetector(nn.Module):
    """Backbone -> decoder (--decoder: moe, fpn, sinet, zoom) -> mask logits at the input size,
    with side logits for deep supervision and backbone groups that can be frozen."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg.backbone, cfg.pretrained, cfg.pretrained_path)
        self.decoder = build_decoder(self.backbone.channels, self.backbone.reductions, cfg)
        self.frozen_groups: set[int] = set()
        # The input statistics this model is trained (or was trained) with: the backbone's own
        # for a new model; a loaded checkpoint's replace it (see Normalization.of_checkpoint).
        self.normalization = self.backbone.normalization
        self._register_load_state_dict_pre_hook(_heads_into_decoder)

    @property
    def stride(self) -> int:
        """Input sides must be multiples of this: the backbone's output stride, times the
        decoder's multiple where it runs the image at other scales."""
        return max(self.backbone.reductions) * self.decoder.size_multiple

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward: timm's per-stage checkpointing in the
        backbone, per block in the decoder."""
        self.backbone.body.set_grad_checkpointing(enable)
        self.decoder.grad_checkpointing = enable

    @property
    def side_weights(self) -> list[float]:
        return list(self.decoder.side_weights)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        size = x.shape[-2:]
        pyramids = [self.backbone(_scaled(x, s)) for s in self.decoder.input_scales]
        out = self.decoder(pyramids)
        logits = F.interpolate(out.logits, size=size, mode="bilinear", align_corners=False)
        sides = [F.interpolate(s, size=size, mode="bilinear", align_corners=False) for s in out.side_logits]
        routings = out.routings
        aux = torch.stack([r.balance_loss for r in routings]).mean() if routings else logits.new_zeros(())
        return ModelOutput(logits, sides, aux, [r.usage for r in routings])

    # -- freezing -------------------------------------------------------------
    def set_frozen_groups(self, frozen: set[int]) -> None:
        """Freeze exactly these backbone groups (others train)."""
        self.frozen_groups = set(frozen)
        for g, params in enumerate(self.backbone.named_parameters_by_group()):
            for _, p in params:
                p.requires_grad_(g not in self.frozen_groups)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        # Frozen parts stay in eval mode so their norm statistics and drop-path do not move.
        for g in self.frozen_groups:
            for m in self.backbone.modules_of_group(g):
                m.eval()
        if self.cfg.backbone_norm == "frozen":
            freeze_batch_norms(self.backbone)
        return self


def freeze_batch_norms(module: nn.Module) -> None:
    """BatchNorm layers to eval mode: the pretrained running statistics are used and kept.
    Small batches of a few hundred images estimate them worse than ImageNet did, and a shallow
    group's statistics changing under the deeper layers shook the loss when it was unfrozen."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _scaled(x: torch.Tensor, scale: tuple[int, int]) -> torch.Tensor:
    """The image at num/den of its size (whole-number arithmetic, so a traced graph keeps it)."""
    num, den = scale
    if num == den:
        return x
    h, w = x.shape[-2:]
    return F.interpolate(x, size=(h * num // den, w * num // den), mode="bilinear", align_corners=False)


def _heads_into_decoder(state_dict, prefix, *args) -> None:
    """Checkpoints written before decoders were pluggable keep the MoE decoder's heads at the
    top level (head.*, side_heads.*); they live in the decoder now. Renamed on load."""
    for key in [k for k in state_dict if k.startswith((prefix + "head.", prefix + "side_heads."))]:
        state_dict[prefix + "decoder." + key[len(prefix) :]] = state_dict.pop(key)


def build_model(cfg: ModelConfig) -> CamoDetector:
    return CamoDetector(cfg)
