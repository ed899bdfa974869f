"""The trainer's AdamW is the fused one on the CPU too, and updates as the per-tensor loop does."""

import torch

from camodet.config import ModelConfig
from camodet.engine.optim import build_optimizer, param_groups
from camodet.models import build_model


def test_cpu_adamw_is_fused_and_matches_the_per_tensor_loop():
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="edgenext_xx_small", num_experts=2, decoder_channels=16)
    models = [build_model(cfg), build_model(cfg)]
    models[1].load_state_dict(models[0].state_dict())
    fused = build_optimizer(models[0], 0.05, torch.device("cpu"))
    assert all(g["fused"] for g in fused.param_groups)
    loop = torch.optim.AdamW(param_groups(models[1], 0.05), lr=0.0, foreach=False)
    for opt in (fused, loop):
        for g in opt.param_groups:
            g["lr"] = 1e-3
    for step in range(3):
        for m, opt in zip(models, (fused, loop)):
            for i, p in enumerate(m.parameters()):
                p.grad = torch.full_like(p, 0.01 * (step + 1)) + 0.001 * (i % 7) * p.detach()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
