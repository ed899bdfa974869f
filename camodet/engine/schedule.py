"""The stage plan: which stage an epoch is in, which backbone groups train, and
each group's learning rate at (epoch, step). Pure functions of the configuration
and the position, so a resumed run computes exactly what an uninterrupted one did."""

import math
from dataclasses import dataclass, field

from ..config import TrainConfig


@dataclass(frozen=True)
class Plan:
    """The stage and LR schedule of a run: which backbone groups train in each epoch
    and each parameter group's LR at each step. A pure function of the config (make_plan)."""

    epochs: int
    stage1_end: int  # last epoch of stage 1 (0: no stage 1)
    num_groups: int  # backbone groups, 0 = shallowest
    progressive: bool
    lr: tuple  # peak LR of stage 1 and stage 2
    min_lr: float
    scheduler: str
    warmup_epochs: float
    unfreeze_warmup_epochs: float
    backbone_lr_mult: float
    # First epoch of each stage's LR schedule; a warm restart moves its stage's start.
    schedule_start: tuple = field(default=(1, 1))

    def stage(self, epoch: int) -> int:
        return 1 if epoch <= self.stage1_end else 2

    def span(self, stage: int) -> tuple[int, int]:
        return (1, self.stage1_end) if stage == 1 else (self.stage1_end + 1, self.epochs)

    def unfreeze_epoch(self, group: int) -> int:
        """First epoch in which backbone group `group` trains. With progressive unfreeze the
        deepest group starts with stage 2 and group of depth rank r joins once the stage-2
        fraction reaches r / num_groups (>=, so a resume cannot step over a milestone)."""
        start, end = self.span(2)
        if not self.progressive:
            return start
        rank = self.num_groups - 1 - group  # 0 = deepest
        length = end - start + 1
        return start + -(-rank * length // self.num_groups)

    def frozen_groups(self, epoch: int) -> frozenset:
        if self.stage(epoch) == 1:
            return frozenset(range(self.num_groups))
        return frozenset(g for g in range(self.num_groups) if epoch < self.unfreeze_epoch(g))

    def stage_lr(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """LR of the stage's schedule at optimizer step `step` (0-based) of `epoch`."""
        stage = self.stage(epoch)
        base = self.lr[stage - 1]
        start, end = self.schedule_start[stage - 1], self.span(stage)[1]
        return schedule_lr(
            t=(epoch - start) * steps_per_epoch + step,
            total=(end - start + 1) * steps_per_epoch,
            warmup=round(self.warmup_epochs * steps_per_epoch),
            base=base,
            min_lr=self.min_lr,
            kind=self.scheduler,
        )

    def group_lr(self, group: int | None, epoch: int, step: int, steps_per_epoch: int) -> float:
        """LR of a parameter group: group None is the decoder/heads, an int a backbone group."""
        lr = self.stage_lr(epoch, step, steps_per_epoch)
        if group is None:
            return lr
        unfreeze = self.unfreeze_epoch(group)
        since = (epoch - unfreeze) * steps_per_epoch + step
        ramp_steps = max(1, round(self.unfreeze_warmup_epochs * steps_per_epoch))
        ramp = min(1.0, (since + 1) / ramp_steps) if self.unfreeze_warmup_epochs > 0 else 1.0
        return lr * self.backbone_lr_mult * max(ramp, 0.0)


def schedule_lr(t: int, total: int, warmup: int, base: float, min_lr: float, kind: str) -> float:
    """Linear warmup over `warmup` steps, then `kind` down to min_lr at step total - 1."""
    warmup = min(warmup, max(total - 1, 0))
    if t < warmup:
        return base * (t + 1) / warmup
    if kind == "constant":
        return base
    progress = min(1.0, (t - warmup) / max(1, total - warmup - 1))
    if kind == "step":
        # x0.1 at half and at three quarters of the post-warmup steps.
        return max(min_lr, base * 0.1 ** ((progress >= 0.5) + (progress >= 0.75)))
    return min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def make_plan(
    cfg: TrainConfig, num_groups: int, restart_epoch: int | None = None, schedule_start: tuple | None = None
) -> Plan:
    """restart_epoch: the first epoch of a warm restart; its stage's schedule starts there.
    schedule_start: the starts saved in the checkpoint of an exact resume (a run that was
    itself a warm restart keeps its re-planned schedule)."""
    s = cfg.stages
    stage1_end = 0 if s.skip_stage1 else s.stage1_epochs
    starts = list(schedule_start) if schedule_start else [1, stage1_end + 1]
    plan = Plan(
        epochs=s.epochs,
        stage1_end=stage1_end,
        num_groups=num_groups,
        progressive=s.progressive_unfreeze,
        lr=(cfg.optim.lr, cfg.stage2_lr),
        min_lr=cfg.optim.min_lr,
        scheduler=cfg.optim.scheduler,
        warmup_epochs=cfg.optim.warmup_epochs,
        unfreeze_warmup_epochs=s.unfreeze_warmup_epochs,
        backbone_lr_mult=cfg.optim.backbone_lr_mult,
    )
    if restart_epoch is not None and restart_epoch <= s.epochs:
        starts[plan.stage(restart_epoch) - 1] = restart_epoch
    return Plan(**{**plan.__dict__, "schedule_start": tuple(starts)})


def uncertainty_weight(peak: float, epoch: int, epochs: int) -> float:
    """The uncertainty-aware loss's weight in `epoch` (1-based): a cosine ramp from 0 in the first
    epoch to `peak` in the last (ZoomNet's increasing schedule), so that early, uncertain maps are
    not pushed to a decision before they have one."""
    if peak <= 0 or epochs <= 1:
        return peak
    progress = (min(max(epoch, 1), epochs) - 1) / (epochs - 1)
    return peak * 0.5 * (1 - math.cos(math.pi * progress))
