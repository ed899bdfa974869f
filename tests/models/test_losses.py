"""The structure loss against its textbook formula (a 31x31 avg_pool2d boundary weight
recomputed for every output), forward and gradient, on masks that are random, soft,
empty and full; deep supervision computes the mask's weight once per step."""

import pytest
import torch
import torch.nn.functional as F

from camodet.models import ModelOutput, losses
from camodet.models.losses import (
    LossSettings,
    MaskTarget,
    boundary_weight,
    box_mean,
    structure_loss,
    total_loss,
)


def reference_structure_loss(logits, mask):
    """camodet's structure loss before issue 16, verbatim (F3Net / SINet-V2)."""
    logits, mask = logits.float(), mask.float()
    weight = 1 + 5 * torch.abs(F.avg_pool2d(mask, 31, stride=1, padding=15) - mask)
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    wbce = (weight * bce).sum((2, 3)) / weight.sum((2, 3))
    prob = torch.sigmoid(logits)
    inter = (prob * mask * weight).sum((2, 3))
    union = ((prob + mask) * weight).sum((2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (wbce + wiou).mean()


def masks(b: int, h: int, w: int, gen) -> dict:
    binary = (torch.rand(b, 1, h, w, generator=gen) > 0.6).float()
    blob = torch.zeros(b, 1, h, w)
    blob[..., h // 4 : 3 * h // 4, w // 3 : w - 2] = 1  # a boundary band inside, one touching the edge
    return {
        "binary": binary,
        "soft": torch.rand(b, 1, h, w, generator=gen),
        "blob": blob,
        "empty": torch.zeros(b, 1, h, w),
        "full": torch.ones(b, 1, h, w),
        "mixed": torch.cat([blob[:1], torch.zeros(1, 1, h, w), torch.ones(1, 1, h, w), binary[:1]]),
    }


@pytest.mark.parametrize("k", [1, 3, 31])
@pytest.mark.parametrize("hw", [(8, 5), (40, 64), (97, 33)])
def test_box_mean_is_avg_pool_with_zero_padding(k, hw):
    gen = torch.Generator().manual_seed(k)
    x = torch.rand(2, 1, *hw, generator=gen)
    # Against float64 pooling: the running sums are closer to it (~3e-8) than float32's
    # avg_pool2d itself is (~7e-7 at k=31 on soft masks).
    ref = F.avg_pool2d(x.double(), k, stride=1, padding=k // 2)
    assert (box_mean(x, k).double() - ref).abs().max().item() <= 1e-7
    binary = (x > 0.5).float()  # 0/1 masks: the running sums are exact
    assert torch.allclose(
        box_mean(binary, k), F.avg_pool2d(binary, k, stride=1, padding=k // 2), atol=1e-7, rtol=0
    )


def test_box_mean_rejects_an_even_window():
    with pytest.raises(ValueError, match="odd"):
        box_mean(torch.zeros(1, 1, 8, 8), 4)


@pytest.mark.parametrize("kind", ["binary", "soft", "blob", "empty", "full", "mixed"])
def test_structure_loss_equals_the_old_formula_forward_and_gradient(kind):
    gen = torch.Generator().manual_seed(0)
    mask = masks(4, 48, 40, gen)[kind]
    logits = (3 * torch.randn(4, 1, 48, 40, generator=gen)).requires_grad_()
    ref = reference_structure_loss(logits, mask)
    (g_ref,) = torch.autograd.grad(ref, logits)
    for target in (mask, MaskTarget.of(mask)):  # the function form and the shared-target form
        new = structure_loss(logits, target)
        (g_new,) = torch.autograd.grad(new, logits)
        assert abs(new.item() - ref.item()) <= 1e-6
        assert (g_new - g_ref).abs().max().item() <= 1e-6 * g_ref.abs().max().item()


def test_boundary_weight_is_the_old_weight():
    gen = torch.Generator().manual_seed(1)
    for mask in masks(4, 64, 64, gen).values():
        m = mask.double()
        ref = 1 + 5 * torch.abs(F.avg_pool2d(m, 31, stride=1, padding=15) - m)
        assert (boundary_weight(mask).double() - ref).abs().max().item() <= 1e-6


def test_boundary_gain_zero_is_plain_bce_plus_soft_iou():
    gen = torch.Generator().manual_seed(2)
    for mask in masks(4, 40, 64, gen).values():
        logits = torch.randn(mask.shape, generator=gen)
        prob = torch.sigmoid(logits)
        inter, union = (prob * mask).sum((2, 3)), (prob + mask).sum((2, 3))
        bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none").mean((2, 3))
        plain = (bce + 1 - (inter + 1) / (union - inter + 1)).mean()
        got, _ = total_loss(ModelOutput(logits), mask, LossSettings(boundary_gain=0.0))
        assert torch.allclose(got, plain, atol=1e-6)
    assert not torch.allclose(structure_loss(logits, mask), plain, atol=1e-3)  # the default weighs


def test_total_loss_with_deep_supervision_equals_the_old_sum_and_weighs_the_mask_once(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    mask = masks(4, 32, 32, gen)["mixed"]
    main = torch.randn(4, 1, 32, 32, generator=gen, requires_grad=True)
    sides = [torch.randn(4, 1, 32, 32, generator=gen, requires_grad=True) for _ in range(3)]
    aux = torch.tensor(1.3, requires_grad=True)
    weights = [0.5, 0.25, 0.125]
    calls = []
    real = losses.boundary_weight
    monkeypatch.setattr(losses, "boundary_weight", lambda m, **kw: calls.append(1) or real(m, **kw))
    total, parts = total_loss(ModelOutput(main, sides, aux), mask, LossSettings(tuple(weights), 0.01))
    assert len(calls) == 1  # once per step, not once per output
    ref = (
        reference_structure_loss(main, mask)
        + sum(w * reference_structure_loss(s, mask) for w, s in zip(weights, sides))
        + 0.01 * aux
    )
    assert abs(total.item() - ref.item()) <= 1e-6
    assert set(parts) == {"main", "side", "moe_balance"} and not parts["side"].requires_grad
    inputs = [main, *sides, aux]
    for g_new, g_ref in zip(torch.autograd.grad(total, inputs), torch.autograd.grad(ref, inputs)):
        assert (g_new - g_ref).abs().max().item() <= 1e-6 * max(g_ref.abs().max().item(), 1e-3)


def test_half_precision_logits_are_scored_in_float32():
    gen = torch.Generator().manual_seed(3)
    mask = masks(2, 32, 32, gen)["blob"][:2]
    logits = torch.randn(2, 1, 32, 32, generator=gen).bfloat16()
    assert structure_loss(logits, mask).dtype == torch.float32
    assert abs(structure_loss(logits, mask).item() - reference_structure_loss(logits, mask).item()) <= 1e-6
