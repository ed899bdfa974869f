"""Structure loss (weighted BCE + weighted IoU on logits, as in F3Net/SINet-V2),
deep supervision, the MoE balance term and ZoomNet's uncertainty-aware term.

What the loss derives from the mask alone (the boundary weight and its sums) is
computed once per step in a `MaskTarget` and shared by the main output and every
side output: all of them are at the mask's size. The boundary weight's 31x31 local
mean is a box sum over a summed-area table, so its cost does not grow with the
window (the 31x31 avg_pool2d it replaces cost as much as the rest of a small step)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

BOUNDARY_WINDOW = 31  # side of the local mean that finds the boundary band
BOUNDARY_GAIN = 5  # a pixel far from its local mean weighs up to 1 + 5 = 6x


def box_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """F.avg_pool2d(x, k, stride=1, padding=k // 2) (zero padding counted, so a box sum / k^2)
    in O(H*W) whatever k: running sums along H then W, a window being the difference of two.
    Summed in float64, which makes the differences exact for 0/1 masks and leaves ~1e-16 of
    the sums for soft (interpolated) ones, where float32 would lose ~1e-7 * W."""
    if k % 2 != 1:
        raise ValueError(f"box_mean needs an odd window (got {k})")
    r = k // 2
    acc = torch.float32 if x.device.type == "mps" else torch.float64  # mps has no float64
    s = x.to(acc)
    c = F.pad(s, (0, 0, r + 1, r)).cumsum(-2)  # c[i + k] - c[i] = rows i - r .. i + r
    s = c[..., k:, :] - c[..., :-k, :]
    c = F.pad(s, (r + 1, r)).cumsum(-1)
    s = c[..., k:] - c[..., :-k]
    return (s / (k * k)).to(x.dtype)


def boundary_weight(
    mask: torch.Tensor, window: int = BOUNDARY_WINDOW, gain: float = BOUNDARY_GAIN
) -> torch.Tensor:
    """Pixels near the boundary (where the local mean differs from the mask) weigh up to 1 + gain."""
    mask = mask.float()
    if gain == 0:  # every pixel alike: plain BCE + soft IoU
        return torch.ones_like(mask)
    return 1 + gain * torch.abs(box_mean(mask, window) - mask)


@dataclass
class MaskTarget:
    """A mask and what the structure loss needs from it alone, computed once per step."""

    mask: torch.Tensor  # (B, 1, H, W) float
    weight: torch.Tensor  # boundary weight, same shape
    weighted_mask: torch.Tensor  # weight * mask
    weight_sum: torch.Tensor  # (B, 1): sum of weight per image
    weighted_mask_sum: torch.Tensor  # (B, 1): sum of weight * mask per image

    @classmethod
    def of(cls, mask: torch.Tensor, boundary_gain: float = BOUNDARY_GAIN) -> "MaskTarget":
        mask = mask.float()
        weight = boundary_weight(mask, gain=boundary_gain)
        weighted = weight * mask
        return cls(mask, weight, weighted, weight.sum((2, 3)), weighted.sum((2, 3)))


def structure_loss(logits: torch.Tensor, mask: "torch.Tensor | MaskTarget") -> torch.Tensor:
    """Weighted BCE + weighted IoU, mean over the batch. `mask` is the (B, 1, H, W) mask or its
    MaskTarget (pass that when several outputs share one mask). Same values as the textbook form
        wbce = sum(w * bce) / sum(w); wiou = 1 - (sum(p*m*w) + 1) / (sum((p+m)*w) - sum(p*m*w) + 1)
    with the mask-only products and sums taken from the target instead of recomputed."""
    t = mask if isinstance(mask, MaskTarget) else MaskTarget.of(mask)
    logits = logits.float()
    # BCE with the weight inside the fused kernel: sum(w * bce) without a full-size product.
    wbce = F.binary_cross_entropy_with_logits(logits, t.mask, weight=t.weight, reduction="none").sum((2, 3))
    wbce = wbce / t.weight_sum
    prob = torch.sigmoid(logits)
    inter = (prob * t.weighted_mask).sum((2, 3))
    union = (prob * t.weight).sum((2, 3)) + t.weighted_mask_sum
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (wbce + wiou).mean()


def uncertainty_loss(logits: torch.Tensor) -> torch.Tensor:
    """ZoomNet's uncertainty-aware loss: mean of 1 - (2p - 1)^2, 1 where p = 0.5 and 0 at p = 0 or
    1, so it pushes the ambiguous pixels of a prediction towards a decision."""
    return (1 - (2 * torch.sigmoid(logits.float()) - 1).square()).mean()


@dataclass(frozen=True)
class LossSettings:
    """How the terms of the training loss are weighed: a new term gets its weight here."""

    side_weights: tuple[float, ...] = ()  # deep supervision: one weight per side output
    moe_weight: float = 0.01  # the MoE balance term
    boundary_gain: float = BOUNDARY_GAIN  # structure loss: boundary pixels weigh up to 1 + this
    uncertainty_weight: float = 0.0  # ZoomNet's uncertainty-aware term on the main output (0: off)

    @classmethod
    def for_model(cls, model, moe_weight: float, boundary_gain: float = BOUNDARY_GAIN) -> "LossSettings":
        """The settings for a CamoDetector: its side outputs' weights, the balance weight and the
        structure loss's boundary gain."""
        return cls(tuple(model.side_weights), moe_weight, boundary_gain)


def total_loss(output, mask: torch.Tensor, settings: LossSettings):
    """(total, parts): parts are detached tensors for logging (no host sync here). The mask's
    boundary weight is computed once and shared by the main and side outputs."""
    side_weights, moe_weight = settings.side_weights, settings.moe_weight
    target = MaskTarget.of(mask, settings.boundary_gain)
    main = structure_loss(output.logits, target)
    total = main
    parts = {"main": main.detach()}
    if output.side_logits:
        side = sum(w * structure_loss(s, target) for w, s in zip(side_weights, output.side_logits))
        total = total + side
        parts["side"] = side.detach()
    if settings.uncertainty_weight > 0:
        u = uncertainty_loss(output.logits)
        total = total + settings.uncertainty_weight * u
        parts["uncertainty"] = u.detach()
    if output.aux_loss is not None and moe_weight > 0:
        total = total + moe_weight * output.aux_loss.float()
        parts["moe_balance"] = output.aux_loss.detach()
    return total, parts
