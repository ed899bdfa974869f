"""`camodet plan`: choose micro-batch, accumulation and LR per stage from measured steps.
The choice is a pure function of the measurements, so it is unit-tested with made-up ones."""

import math
from dataclasses import dataclass

# Share of the memory budget kept free, per profile.
PROFILES = {"conservative": 0.30, "balanced": 0.15, "fast": 0.05}


class PlanError(ValueError):
    """No configuration fits; the message says what to change."""


@dataclass(frozen=True)
class StagePlan:
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
