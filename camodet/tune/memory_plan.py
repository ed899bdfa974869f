"""`camodet plan`: choose micro-batch, accumulation and LR per stage from measured steps.
The choice is a pure function of the measurements, so it is unit-tested with made-up ones."""

import dataclasses
import math
import os
from dataclasses import dataclass

from ..config import TrainConfig, save_yaml
from ..errors import ConfigError
from ..options import PlanOptions, PlanSettings

# Share of the memory budget kept free, per profile.
PROFILES = {"conservative": 0.30, "balanced": 0.15, "fast": 0.05}


class PlanError(ValueError):
    """No configuration fits; the message says what to change."""


@dataclass(frozen=True)
class StagePlan:
    """The chosen micro-batch of one stage with what it costs and its LR."""

    stage: int
    micro_batch: int
    peak_mb: float
    s_per_step: float
    effective_batch: int
    lr: float
    minutes_per_epoch: float


def scale_lr(lr: float, new_batch: int, old_batch: int, rule: str) -> float:
    """linear: LR proportional to the effective batch (Goyal et al.); sqrt: to its square root."""
    ratio = new_batch / old_batch
    return lr * (ratio if rule == "linear" else math.sqrt(ratio))


def largest_fitting(measured: list[dict], stage: int, limit_mb: float) -> dict | None:
    ok = [m for m in measured if m["stage"] == stage and "error" not in m and m["peak_mb"] <= limit_mb]
    return max(ok, key=lambda m: m["batch"]) if ok else None


def choose(
    measured: list[dict],
    budget_mb: float,
    margin: float,
    effective_batch: int,
    base: dict,
    lr_scaling: str,
    images: int,
) -> tuple[int, list[StagePlan]]:
    """(accumulation steps, [stage 1 plan, stage 2 plan]).

    `base`: the configuration's lr, stage2_lr and the effective batch each was tuned for
    (base_batch1, base_batch2). One accumulation count serves both stages (the trainer
    has one), chosen for stage 2, the stage that needs the most memory per image."""
    limit = budget_mb * (1 - margin)
    picks = {s: largest_fitting(measured, s, limit) for s in (1, 2)}
    for s, pick in picks.items():
        if pick is None:
            smallest = min(
                (m for m in measured if m["stage"] == s and "error" not in m),
                key=lambda m: m["batch"],
                default=None,
            )
            need = (
                f"{smallest['peak_mb']:.0f} MB at micro-batch {smallest['batch']}"
                if smallest
                else "every try failed"
            )
            raise PlanError(
                f"stage {s}: nothing fits in {limit:.0f} MB ({budget_mb:.0f} MB budget minus "
                f"{margin:.0%} margin; {need}); try --grad-checkpointing, a smaller --img-size "
                f"or a larger --gpu-memory"
            )
    accum = max(1, math.ceil(effective_batch / picks[2]["batch"]))
    plans = []
    for s, lr, base_batch in (
        (1, base["lr"], base["base_batch1"]),
        (2, base["stage2_lr"], base["base_batch2"]),
    ):
        pick = picks[s]
        # the smallest measured micro-batch that reaches the target with this accumulation, within the fit
        candidates = sorted(
            m["batch"] for m in measured if m["stage"] == s and "error" not in m and m["peak_mb"] <= limit
        )
        micro = next((b for b in candidates if b * accum >= effective_batch), pick["batch"])
        m = next(x for x in measured if x["stage"] == s and x["batch"] == micro)
        eff = micro * accum
        steps = math.ceil(images / micro)
        plans.append(
            StagePlan(
                s,
                micro,
                m["peak_mb"],
                m["s_per_step"],
                eff,
                scale_lr(lr, eff, base_batch, lr_scaling),
                steps * m["s_per_step"] / 60,
            )
        )
    return accum, plans


def format_plan(profile: str, accum: int, plans: list[StagePlan], memory_kind: str, budget_mb: float) -> str:
    lines = [f"{profile}: accumulation {accum}"]
    for p in plans:
        lines.append(
            f"  stage {p.stage}: micro-batch {p.micro_batch} x {accum} = effective {p.effective_batch}, "
            f"lr {p.lr:.3g}, peak {p.peak_mb:.0f} MB of {budget_mb:.0f} ({memory_kind}), "
            f"{p.s_per_step:.2f} s/micro-step, ~{p.minutes_per_epoch:.1f} min/epoch"
        )
    return "\n".join(lines)


def parse_memory(text: str) -> float:
    """'16GB', '16G', '12000MB' or a number of GB -> MB."""
    t = text.strip().upper().removesuffix("B")
    try:
        if t.endswith("M"):
            return float(t[:-1])
        return float(t.removesuffix("G")) * 1024
    except ValueError:
        raise ConfigError(f"--gpu-memory {text!r}: use a size like 16GB or 12000MB") from None


def plan_command(opts: PlanOptions, has_data: bool) -> int:
    """`camodet plan`: measure real steps of the model of opts.train for each candidate
    micro-batch, then write one YAML per profile (conservative, balanced, fast) into opts.out_dir."""
    import torch

    from ..engine.measure import MEMORY_KINDS, measure_candidates, step_settings
    from ..models import check_model

    cfg, p = opts.train, opts.plan
    check_model(cfg.model, cfg.data.img_size)
    on_gpu = torch.cuda.is_available() and cfg.run.device != "cpu"
    budget = memory_budget(p.gpu_memory, on_gpu)
    images = training_images(cfg) if has_data else p.num_images
    step_spec = {  # the run's own training step (its optim and speed settings), as it would train
        "model_cfg": dataclasses.asdict(cfg.model),
        "img_size": cfg.data.img_size,
        "steps": p.steps,
        "device": "cuda" if on_gpu else "cpu",
        **step_settings(cfg),
    }
    measured = measure_candidates(step_spec, p.candidates, budget, show_measurement)
    kind = next((m["memory"] for m in measured if "memory" in m), "unknown")
    print(
        f"\nbudget {budget:.0f} MB ({'GPU' if on_gpu else 'CPU RAM'}; measured: "
        f"{MEMORY_KINDS.get(kind, kind)}), "
        f"{images} training images, target effective batch {p.effective_batch}, LR rule {p.lr_scaling}\n"
    )
    write_profiles(cfg, p, measured, budget, kind, images)
    return 0


def memory_budget(gpu_memory: str | None, on_gpu: bool) -> float:
    """MB to plan for: --gpu-memory, else the GPU's memory, else the machine's RAM."""
    import torch

    if gpu_memory:
        return parse_memory(gpu_memory)
    if on_gpu:
        return torch.cuda.get_device_properties(0).total_memory / 2**20
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def training_images(cfg: TrainConfig) -> int:
    """How many images the run would train on (the training split, after validation is carved)."""
    from ..data.splits import split_train_val, training_samples

    samples = training_samples(cfg.data, skip_bad_files=True)
    return len(split_train_val(samples, cfg.data.val_fraction, cfg.run.seed)[0])


def show_measurement(m: dict) -> None:
    print(
        f"measured stage {m['stage']}, micro-batch {m['batch']}: "
        + (
            f"failed ({m['error']})"
            if "error" in m
            else f"{m['peak_mb']:.0f} MB, {m['s_per_step']:.2f} s/step"
        ),
        flush=True,
    )


def write_profiles(cfg: TrainConfig, p: PlanSettings, measured: list, budget: float, kind: str, images: int):
    """plan-<profile>.yaml for each profile that fits: cfg with that profile's batches and LRs."""
    base = {
        "lr": cfg.optim.lr,
        "stage2_lr": cfg.stage2_lr,
        "base_batch1": cfg.optim.batch_size * cfg.optim.accumulation_steps,
        "base_batch2": cfg.stage2_batch_size * cfg.optim.accumulation_steps,
    }
    os.makedirs(p.out_dir, exist_ok=True)
    for profile, margin in PROFILES.items():
        try:
            accum, plans = choose(measured, budget, margin, p.effective_batch, base, p.lr_scaling, images)
        except PlanError as e:
            print(f"{profile}: {e}")
            continue
        optim = dataclasses.replace(
            cfg.optim,
            batch_size=plans[0].micro_batch,
            stage2_batch_size=plans[1].micro_batch,
            accumulation_steps=accum,
            lr=plans[0].lr,
            stage2_lr=plans[1].lr,
        )
        path = os.path.join(p.out_dir, f"plan-{profile}.yaml")
        save_yaml(dataclasses.replace(cfg, optim=optim), path)
        print(format_plan(profile, accum, plans, kind, budget) + f"\n  -> {path}")
