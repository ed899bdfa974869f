"""Mixture-of-experts block with image-level routing.

Dispatch is batched: every expert runs once on the whole batch and the gates
(zero for experts a sample did not choose) weight the results. At the coarse
decoder scales where the block sits this costs little, needs no host sync and
no per-sample loop, and unselected experts get no gradient from that sample."""

from dataclasses import dataclass

import torch
from torch import nn

from .experts import make_expert


@dataclass
class Routing:
    gates: torch.Tensor  # (B, E), rows sum to 1, zeros outside the top-k
    balance_loss: torch.Tensor  # scalar, 1.0 at perfect balance
    usage: torch.Tensor  # (E,) mean gate per expert over the batch (detached)


def route(logits: torch.Tensor, top_k: int, gating: str) -> Routing:
    probs = logits.softmax(-1)
    num_experts = probs.shape[-1]
    if gating == "dense":
        gates = probs
        dispatch = probs.detach()
    else:
        vals, idx = probs.topk(top_k, dim=-1)
        gates = torch.zeros_like(probs).scatter(-1, idx, vals / vals.sum(-1, keepdim=True))
        dispatch = torch.zeros_like(probs).scatter(-1, idx, 1.0 / top_k)
    # Switch-Transformer balance: fraction dispatched (no grad) x mean router probability (grad).
    balance = num_experts * (dispatch.mean(0) * probs.mean(0)).sum()
    return Routing(gates, balance, gates.detach().mean(0))


class MoEBlock(nn.Module):
    def __init__(self, channels: int, num_experts: int, top_k: int = 2, gating: str = "topk"):
        super().__init__()
        self.experts = nn.ModuleList(make_expert(i, channels) for i in range(num_experts))
        self.router = nn.Linear(channels, num_experts)
        nn.init.normal_(self.router.weight, std=0.01)
        nn.init.zeros_(self.router.bias)
        self.top_k = min(top_k, num_experts)
        self.gating = gating

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        routing = route(self.router(x.mean((2, 3))), self.top_k, self.gating)
        mixed = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            mixed = mixed + routing.gates[:, e, None, None, None] * expert(x)
        return x + mixed, routing
