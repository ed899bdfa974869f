"""Training-step cost of the reference configuration against the bare backbone.

Target (issue 6): full-model step time / bare-backbone step time <= 1.5 on CPU.
Reproduce: .venv/bin/python benchmarks/step_time.py [--img-size 384 --batch 2 --repeats 3]
Prints a table: forward+backward seconds per step and images/s for the bare backbone,
stage 1 (backbone frozen) and stage 2 (everything trains), all measured in one run."""

import argparse
import platform
import time

import torch

from camodet.config import ModelConfig
from camodet.losses import total_loss
from camodet.models import build_model


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="edgenext_base")
    p.add_argument("--num-experts", type=int, default=7)
    p.add_argument("--img-size", type=int, default=384)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=a.backbone, num_experts=a.num_experts, deep_supervision=True)).train()
    x = torch.randn(a.batch, 3, a.img_size, a.img_size)
    y = (torch.rand(a.batch, 1, a.img_size, a.img_size) > 0.7).float()

    def bare():
        model.zero_grad(set_to_none=True)
        sum(f.mean() for f in model.backbone(x)).backward()

    def full():
        model.zero_grad(set_to_none=True)
        loss, _ = total_loss(model(x), y, model.side_weights, 0.01)
        loss.backward()

    rows = []
    model.set_frozen_groups(set())
    rows.append(("bare backbone (trainable)", timed(bare, a.repeats)))
    model.set_frozen_groups(set(range(model.backbone.num_groups)))
    rows.append(("stage 1: full model, backbone frozen", timed(full, a.repeats)))
    model.set_frozen_groups(set())
    rows.append(("stage 2: full model, all trainable", timed(full, a.repeats)))
    print(f"{a.backbone}, {a.num_experts} experts, deep supervision, {a.img_size}px, batch {a.batch}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"| {'step (forward + backward)':<40} | s/step | images/s | x bare |")
    print("|" + "-" * 42 + "|--------|----------|--------|")
    for name, s in rows:
        print(f"| {name:<40} | {s:6.3f} | {a.batch / s:8.2f} | {s / rows[0][1]:6.2f} |")


if __name__ == "__main__":
    main()
