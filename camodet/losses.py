"""Structure loss (weighted BCE + weighted IoU on logits, as in F3Net/SINet-V2),
deep supervision and the MoE balance term."""

import torch
import torch.nn.functional as F


def structure_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pixels near the boundary (where the 31x31 local mean differs from the mask) weigh up to 6x."""
    logits, mask = logits.float(), mask.float()
    weight = 1 + 5 * torch.abs(F.avg_pool2d(mask, 31, stride=1, padding=15) - mask)
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    wbce = (weight * bce).sum((2, 3)) / weight.sum((2, 3))
    prob = torch.sigmoid(logits)
    inter = (prob * mask * weight).sum((2, 3))
    union = ((prob + mask) * weight).sum((2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (wbce + wiou).mean()


def total_loss(output, mask: torch.Tensor, side_weights: list[float], moe_weight: float):
    """(total, parts): parts are detached tensors for logging (no host sync here)."""
    main = structure_loss(output.logits, mask)
    total = main
    parts = {"main": main.detach()}
    if output.side_logits:
        side = sum(w * structure_loss(s, mask) for w, s in zip(side_weights, output.side_logits))
        total = total + side
        parts["side"] = side.detach()
    if output.aux_loss is not None and moe_weight > 0:
        total = total + moe_weight * output.aux_loss.float()
        parts["moe_balance"] = output.aux_loss.detach()
    return total, parts
