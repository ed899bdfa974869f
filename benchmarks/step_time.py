"""Training-step cost of camodet against the bare backbone and a plain-FPN yardstick, and
the loss's share of the step, at two configurations, all measured in one process.

A step is forward, loss, backward and the optimizer step (the trainer's AdamW settings).
Variants run round-robin, one step each per round, so that a slow spell of a shared
machine hits every variant alike; each row is the median of --steps rounds after --warmup.

Targets (issue 16, CPU, ratios within one run):
  - loss share of the step <= 10% at both configurations, deep supervision on
  - reference: stage 2 / bare backbone <= 1.2; stage 1 / bare backbone <= 0.8
  - small: stage 2 (deep supervision on) / plain-FPN yardstick <= 1.0
(issue 6's stage 2 / bare <= 1.5 is implied.)

Reproduce (from the repository root; PYTHONPATH makes this checkout's camodet the one imported):
  PYTHONPATH=. python benchmarks/step_time.py                  # both configurations, 10 steps after 3
  PYTHONPATH=. python benchmarks/step_time.py --configs small --steps 5 --warmup 2
camodet's rows are the trainer's own step (engine/measure.trainer_step: its loss settings,
optimizer groups, grad clip and scaler) at train's defaults. Against an older camodet without it
(PYTHONPATH=/path/to/old/checkout, for a before/after table) the step is built by hand from
total_loss, build_model, build_optimizer and Backbone, as that trainer took it."""

import argparse
import platform
import statistics
import time

import torch
from fpn_yardstick import PlainFPN, bce_soft_iou

from camodet.config import ModelConfig
from camodet.engine.optim import build_optimizer
from camodet.models import Backbone, ModelOutput, build_model
from camodet.models.losses import LossSettings, total_loss

CONFIGS = {
    "reference": dict(backbone="edgenext_base", num_experts=7, img_size=384, batch=2),
    "small": dict(backbone="edgenext_xx_small", num_experts=4, img_size=128, batch=16),
}
MOE_WEIGHT = 0.01  # the trainer's default --moe-loss-weight
FORMAT = [torch.contiguous_format]  # --channels-last on|off, as the trainer applies it
try:
    from camodet.engine.optim import fused_adamw

    FUSED = fused_adamw(torch.device("cpu"))
except ImportError:  # camodet before issue 16: torch's default, a per-tensor loop on the CPU
    FUSED = None


try:  # camodet since issue 36: the trainer's own step (engine/step.py's builder)
    from camodet.engine.measure import step_config, trainer_step
except ImportError:  # an older checkout: the step as its trainer built it, by hand
    trainer_step = None


def camodet_step(cfg: dict, stage: int, deep_supervision: bool, x, y, keep: dict | None = None):
    """A step of camodet's model as the trainer takes it; `keep` receives the last outputs."""
    if trainer_step is not None:
        return trainers_step(cfg, stage, deep_supervision, x, y, keep)
    model = (
        build_model(
            ModelConfig(
                backbone=cfg["backbone"], num_experts=cfg["num_experts"], deep_supervision=deep_supervision
            )
        )
        .train()
        .to(memory_format=FORMAT[0])
    )
    if stage == 1:
        model.set_frozen_groups(set(range(model.backbone.num_groups)))
    opt = build_optimizer(model, 0.05, torch.device("cpu"))
    for g in opt.param_groups:
        g["lr"] = 1e-4

    def step():
        out = model(x)
        loss, _ = total_loss(out, y, LossSettings(tuple(model.side_weights), MOE_WEIGHT))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if keep is not None:
            keep["out"], keep["side_weights"] = out, model.side_weights

    return step


def trainers_step(cfg: dict, stage: int, deep_supervision: bool, x, y, keep: dict | None):
    """The trainer's TrainStep (its loss settings, optimizer groups, grad clip and scaler) at the
    trainer's defaults, one micro-batch per window, at the fixed LR of the hand-built step."""
    model_cfg = dict(
        backbone=cfg["backbone"], num_experts=cfg["num_experts"], deep_supervision=deep_supervision
    )
    train_cfg = step_config(model_cfg, channels_last=FORMAT[0] is torch.channels_last, amp="off")
    ts = trainer_step(train_cfg, stage, torch.device("cpu"))
    for g in ts.optimizer.param_groups:
        g["lr"] = 1e-4
    batch, params = {"image": x, "mask": y}, ts.trainable()

    def step():
        _, _, out = ts.backward(batch, 1.0)
        ts.gradient_norm(params, train_cfg.optim.grad_clip)
        ts.update()
        if keep is not None:
            keep["out"], keep["side_weights"], keep["loss"] = out, ts.model.side_weights, ts.loss

    return step


def plain_step(module: torch.nn.Module, loss_fn, x, y):
    """A step of a module outside camodet (bare backbone, FPN yardstick) with the trainer's AdamW kind."""
    module.train().to(memory_format=FORMAT[0])
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4, weight_decay=0.05, fused=FUSED)

    def step():
        loss = loss_fn(module(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def loss_step(keep: dict, y):
    """total_loss forward + backward alone, on copies of the stage-2 model's last outputs."""

    def step():
        out = keep["out"]
        leaf = lambda t: t.detach().requires_grad_()  # noqa: E731
        copy = ModelOutput(
            leaf(out.logits),
            [leaf(s) for s in out.side_logits],
            None if out.aux_loss is None else leaf(out.aux_loss),
        )
        settings = keep.get("loss") or LossSettings(tuple(keep["side_weights"]), MOE_WEIGHT)
        loss, _ = total_loss(copy, y, settings)
        loss.backward()

    return step


def measure(
    name: str, cfg: dict, steps: int, warmup: int, clock=time.perf_counter
) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    x = torch.randn(cfg["batch"], 3, cfg["img_size"], cfg["img_size"]).to(memory_format=FORMAT[0])
    y = (torch.rand(cfg["batch"], 1, cfg["img_size"], cfg["img_size"]) > 0.7).float()
    keep: dict = {}
    variants = {
        "bare backbone (trainable)": plain_step(
            Backbone(cfg["backbone"]), lambda f, _: sum(t.float().mean() for t in f), x, y
        ),
        "plain FPN yardstick (all trainable)": plain_step(PlainFPN(cfg["backbone"]), bce_soft_iou, x, y),
        "stage 1: camodet, backbone frozen": camodet_step(cfg, 1, True, x, y),
        "stage 2: camodet, all trainable": camodet_step(cfg, 2, True, x, y, keep),
        "stage 2 without deep supervision": camodet_step(cfg, 2, False, x, y),
    }
    variants["loss alone (fwd + bwd, 4 outputs)"] = loss_step(keep, y)
    times = {k: [] for k in variants}
    for r in range(warmup + steps):
        for k, fn in variants.items():
            t = clock()
            fn()
            if r >= warmup:
                times[k].append(clock() - t)
    return [(k, statistics.median(v)) for k, v in times.items()]


def report(name: str, cfg: dict, rows: list[tuple[str, float]], steps: int, warmup: int) -> None:
    s = dict(rows)
    bare, fpn = s["bare backbone (trainable)"], s["plain FPN yardstick (all trainable)"]
    st1, st2 = s["stage 1: camodet, backbone frozen"], s["stage 2: camodet, all trainable"]
    loss = s["loss alone (fwd + bwd, 4 outputs)"]
    print(
        f"\n### {name}: {cfg['backbone']}, {cfg['num_experts']} experts, deep supervision, "
        f"{cfg['img_size']} px, batch {cfg['batch']}; median of {steps} steps after {warmup}\n"
    )
    print(f"| {'step (forward, loss, backward, AdamW)':<40} | s/step | images/s | x bare | x FPN |")
    print("|" + "-" * 42 + "|--------|----------|--------|-------|")
    for k, v in rows:
        print(f"| {k:<40} | {v:6.3f} | {cfg['batch'] / v:8.2f} | {v / bare:6.2f} | {v / fpn:5.2f} |")
    checks = [
        ("loss share of the stage-2 step", loss / st2, 0.10, "{:.1%}"),
        ("loss share of the stage-1 step", loss / st1, 0.10, "{:.1%}"),
    ]
    if name == "reference":
        checks += [
            ("stage 2 / bare backbone", st2 / bare, 1.2, "{:.2f}"),
            ("stage 1 / bare backbone", st1 / bare, 0.8, "{:.2f}"),
        ]
    if name == "small":
        checks += [("stage 2 (deep supervision) / plain FPN", st2 / fpn, 1.0, "{:.2f}")]
    print()
    for what, value, target, fmt in checks:
        verdict = "met" if value <= target else "NOT met"
        print(f"- {what}: {fmt.format(value)} (target <= {fmt.format(target)}): {verdict}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument(
        "--channels-last",
        choices=["on", "off"],
        default="off",
        help="model and input in channels_last, as the trainer's --channels-last on",
    )
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: the process's CPU time, which other processes on a shared machine do not "
        "inflate; meaningful with --threads 1 only (threads waiting on each other spin)",
    )
    a = p.parse_args()
    if a.clock == "cpu" and torch.get_num_threads() != 1 and a.threads != 1:
        p.error("--clock cpu needs --threads 1")
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    FORMAT[0] = torch.channels_last if a.channels_last == "on" else torch.contiguous_format
    if a.threads:
        torch.set_num_threads(a.threads)
    import camodet

    print(
        f"camodet from {camodet.__file__}; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, fp32, channels_last "
        f"{a.channels_last}, "
        f"{a.clock} clock"
    )
    for name in a.configs:
        report(name, CONFIGS[name], measure(name, CONFIGS[name], a.steps, a.warmup, clock), a.steps, a.warmup)


if __name__ == "__main__":
    main()
