"""CamoDetector: backbone + decoder + heads, with the freezing contract the
trainer relies on (frozen groups: requires_grad=False and modules in eval mode)."""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .backbone import Backbone
from .decoder import Decoder

# Side outputs, coarser each, get half the weight of the previous: 0.5, 0.25, ...
SIDE_WEIGHT_DECAY = 0.5


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, 1, H, W) at input size
    side_logits: list = field(default_factory=list)  # deep supervision, at input size
    aux_loss: torch.Tensor | None = None  # MoE balance (mean over blocks)
    expert_usage: list = field(default_factory=list)  # one (E,) tensor per MoE block


class CamoDetector(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg.backbone, cfg.pretrained, cfg.pretrained_path)
        self.decoder = Decoder(
            self.backbone.channels,
            self.backbone.reductions,
            cfg.decoder_channels,
            cfg.num_experts,
            cfg.top_k,
            cfg.gating,
        )
        c = cfg.decoder_channels
        self.head = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.GELU(), nn.Conv2d(c, 1, 1))
        n_side = len(self.decoder.levels) - 1 if cfg.deep_supervision else 0
        self.side_heads = nn.ModuleList(nn.Conv2d(c, 1, 1) for _ in range(n_side))
        self.frozen_groups: set[int] = set()
        # The input statistics this model is trained (or was trained) with: the backbone's own
        # for a new model; a loaded checkpoint's replace it (see Normalization.of_checkpoint).
        self.normalization = self.backbone.normalization

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward: timm's per-stage checkpointing in the
        backbone, per fuse/MoE block in the decoder."""
        self.backbone.body.set_grad_checkpointing(enable)
        self.decoder.grad_checkpointing = enable

    @property
    def side_weights(self) -> list[float]:
        return [SIDE_WEIGHT_DECAY ** (k + 1) for k in range(len(self.side_heads))]

    def forward(self, x: torch.Tensor) -> ModelOutput:
        size = x.shape[-2:]
        decoded, routings = self.decoder(self.backbone(x))
        logits = F.interpolate(self.head(decoded[0]), size=size, mode="bilinear", align_corners=False)
        sides = [
            F.interpolate(h(d), size=size, mode="bilinear", align_corners=False)
            for h, d in zip(self.side_heads, decoded[1:])
        ]
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


def build_model(cfg: ModelConfig) -> CamoDetector:
    return CamoDetector(cfg)
