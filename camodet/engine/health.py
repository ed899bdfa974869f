"""Health advice from the run history (metrics.jsonl records): pure rules, each saying
what it saw and what to try. Used by the trainer after every epoch and by the report."""

import statistics
from dataclasses import dataclass

FALLING_EPOCHS = 3  # validation IoU falling this many epochs in a row
SPIKE_RATIO = 1.5  # epoch loss this far above the best of the previous epochs
GRAD_RISE_EPOCHS = 3  # gradient norm rising this many epochs in a row ...
GRAD_RISE_RATIO = 2.0  # ... to this multiple of its earlier median
UNUSED_SHARE = 0.01  # an expert chosen for less than 1% of the routing weight
TRAINABLE_CHANGES = ("stage", "unfreeze", "warm_restart", "rollback")


@dataclass(frozen=True)
class Advice:
    epoch: int
    rule: str
    message: str
    subject: str = ""  # what the rule is about when it can fire several times (a MoE block)

    @property
    def key(self) -> tuple[str, str]:
        return self.rule, self.subject


def advise(records: list[dict], config: dict) -> list[Advice]:
    """Advice for the last epoch in `records` (epoch records and events, in order)."""
    epochs = [r for r in records if r.get("type") == "epoch"]
    if not epochs:
        return []
    last = epochs[-1]
    e = last["epoch"]
    stages, optim = config.get("stages", {}), config.get("optim", {})
    stage = last["stage"]
    lr_flag = "--lr" if stage == 1 else "--stage2-lr"
    same_stage = [r for r in epochs if r["stage"] == stage]
    out = []

    ious = [r.get("val", {}).get("IoU") for r in same_stage[-(FALLING_EPOCHS + 1) :]]
    if len(ious) == FALLING_EPOCHS + 1 and None not in ious and all(b < a for a, b in zip(ious, ious[1:])):
        out.append(
            Advice(
                e,
                "iou_falling",
                f"validation IoU fell {FALLING_EPOCHS} epochs in a row ({ious[0]:.4f} -> {ious[-1]:.4f}); "
                f"try {lr_flag} 20% lower, resuming from best_model.pth",
            )
        )

    earlier = [r["loss"] for r in same_stage[:-1] if isinstance(r.get("loss"), (int, float))]
    if earlier and last.get("loss", 0) > SPIKE_RATIO * min(earlier):
        out.append(
            Advice(
                e,
                "loss_spike",
                f"epoch loss {last['loss']:.4f} is {last['loss'] / min(earlier):.1f}x the best so far in "
                f"stage {stage} ({min(earlier):.4f}); try {lr_flag} 20% lower or --grad-clip 0.5",
            )
        )

    # More trainable parameters (an unfreeze) mean a larger norm: compare only since the last change.
    changes = [i for i, r in enumerate(records) if r.get("type") in TRAINABLE_CHANGES]
    since_change = [r for r in records[changes[-1] + 1 if changes else 0 :] if r.get("type") == "epoch"]
    norms = [r.get("grad_norm") for r in since_change]
    if len(norms) > GRAD_RISE_EPOCHS + 1 and None not in norms:
        recent, before = norms[-(GRAD_RISE_EPOCHS + 1) :], norms[:-GRAD_RISE_EPOCHS]
        base = statistics.median(before)
        if all(b > a for a, b in zip(recent, recent[1:])) and recent[-1] > GRAD_RISE_RATIO * base:
            out.append(
                Advice(
                    e,
                    "grad_norm_rising",
                    f"gradient norm rose {GRAD_RISE_EPOCHS} epochs in a row to {recent[-1]:.3g} "
                    f"({recent[-1] / base:.1f}x its earlier median); try {lr_flag} 20% lower "
                    f"or --grad-clip 0.5",
                )
            )

    for block, usage in enumerate(last.get("expert_usage") or []):
        total = sum(usage) or 1.0
        unused = [i for i, u in enumerate(usage) if u / total < UNUSED_SHARE]
        if unused:
            out.append(
                Advice(
                    e,
                    "expert_unused",
                    f"MoE block {block}: expert(s) {unused} got under {UNUSED_SHARE:.0%} of the routing "
                    f"this epoch; raise --moe-loss-weight (e.g. x2) or lower --num-experts",
                    subject=f"block{block}",
                )
            )

    min_lr, lr = optim.get("min_lr", 0.0), last.get("lr")
    stage_end = stages.get("stage1_epochs", 0) if stage == 1 else stages.get("epochs", 0)
    if lr is not None and min_lr > 0 and lr <= min_lr * (1 + 1e-6) and e < stage_end:
        out.append(
            Advice(
                e,
                "lr_at_floor",
                f"the LR reached --min-lr ({min_lr:g}) with {stage_end - e} epoch(s) of stage {stage} "
                f"left; those epochs barely move the weights: lower --min-lr or shorten the stage",
            )
        )
    return out


def new_advice(records: list[dict], config: dict) -> list[Advice]:
    """Advice for the last epoch that did not already fire for the epoch before it: a
    condition that persists is reported once, when it starts."""
    epochs = [i for i, r in enumerate(records) if r.get("type") == "epoch"]
    before = {a.key for a in advise(records[: epochs[-2] + 1], config)} if len(epochs) > 1 else set()
    return [a for a in advise(records, config) if a.key not in before]
