"""`camodet tune lr`: the LR range test (Smith 2015; fastai's and Lightning's "LR finder") run with
the trainer's own parts. A Trainer is built for the configuration, in a scratch run folder that is
deleted afterwards, so the weights (checkpoint, --init-from or pretrained), the stage the run would
train next, its trainable groups, batch, accumulation, AMP, deep supervision and parameter groups are
exactly the ones `camodet train` would use; the LR then grows exponentially over a short run of
TrainStep updates, and nothing is saved: the checkpoint and its run folder stay as they were.

Why not torch-lr-finder: its LRFinder calls `model(inputs)` and `criterion(outputs, labels)` itself
and scales one base LR per group with its own scheduler; it cannot drive our TrainStep (the deep
supervision and mixture-of-experts loss, gradient accumulation with the stage's micro-batch, the
GradScaler under fp16, the trainer's clipping) nor keep the backbone groups at --backbone-lr-mult
of the decoder's LR as the stage plan does. The loop it would replace is the one below."""

import dataclasses
import json
import math
import os
import statistics
import tempfile
from dataclasses import dataclass

from ..config import TrainConfig
from ..errors import ConfigError
from ..fields import flags
from ..options import RangeTestSettings, TuneLROptions

SMOOTHING = 0.95  # exponential moving average of the loss (torch-lr-finder's default, 1 - 0.05)
DIVERGED = 4.0  # the smoothed loss this many times its minimum: the range ends (fastai's rule)
SAFETY = 10.0  # the divergence rule's suggestion: the LR of the loss minimum divided by this
# Weights already trained for the stage (a stage-1 checkpoint for stage 2) give a curve with no
# descent: flat in batch noise, then rising. The steepest "descent" of such a curve is a noise
# wiggle: on CAMO from a stage-1 checkpoint it was at 6.9e-6, while 1e-3 trained best of the grid.
FLAT = 0.10  # the smoothed loss never this far below where it started: the curve has no descent
# The climb is found on a running median centred on each step: the moving average lags it (there
# the edge came out at 3.4e-3, where 2e-3 already trained worse than 1e-3), and one wild batch
# moves a mean but not a median.
RISE = 0.10  # on a flat curve, the median this far above its lowest has started to climb


@dataclass
class RangeResult:
    """The test's curve and what it suggests. `lrs[i]` is the decoder's LR of step i (the backbone
    groups took --backbone-lr-mult of it); `losses` the step losses, `smoothed` their average."""

    stage: int
    epoch: int
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    steepest: float  # LR of the steepest descent of the smoothed loss
    minimum: float  # LR of the smoothed loss's minimum
    edge: float | None  # a flat curve's last LR before the loss climbs (None: the curve descends)
    diverged_at: float | None  # LR where the loss diverged (None: it never did within the range)
    seconds: float

    @property
    def safe(self) -> float:
        return self.minimum / SAFETY

    @property
    def flag(self) -> str:
        return "--lr" if self.stage == 1 else "--stage2-lr"

    @property
    def suggested(self) -> float:
        """The steepest descent; on a curve with no descent, the edge before the loss climbs (the
        range's end where it never climbs)."""
        return self.steepest if self.edge is None else self.edge

    @property
    def climb_beyond_range(self) -> bool:
        """A flat curve whose loss never climbs (nor diverges) within the range: its edge is only
        the range's end, a lower bound of the real one."""
        return self.edge is not None and self.diverged_at is None and self.edge == self.lrs[-1]

    @property
    def rule(self) -> str:
        """Which rule gave the suggestion, in words."""
        if self.edge is None:
            return "steepest descent of the smoothed loss"
        if self.climb_beyond_range:
            return "end of the range (the loss never climbed in it)"
        return "edge before the loss climbs"

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "safe": self.safe, "flag": self.flag, "suggested": self.suggested}


def exponential_lrs(start: float, end: float, steps: int) -> list[float]:
    return [start * (end / start) ** (i / max(1, steps - 1)) for i in range(steps)]


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """Bias-corrected exponential moving average (as fastai's recorder)."""
    avg, out = 0.0, []
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def suggest(
    lrs: list[float], smoothed: list[float], losses: list[float]
) -> tuple[float, float, float | None]:
    """(steepest, minimum, edge): the LR where the smoothed loss falls fastest per decade of LR, the
    LR of its minimum, and, where it never falls FLAT below where it started, the last LR before
    the running median of the step `losses` climbs RISE above its lowest (else None). The first
    tenth of the points (the average still settling) and the last two (the climb into divergence)
    are left out of the steepest search, as torch-lr-finder does."""
    if len(lrs) < 5:
        raise ConfigError(f"the LR range test recorded only {len(lrs)} steps; raise --steps or --end-lr")
    lo, hi = max(1, len(lrs) // 10), max(len(lrs) - 2, len(lrs) // 10 + 2)
    slopes = [
        (smoothed[i + 1] - smoothed[i - 1]) / (math.log10(lrs[i + 1]) - math.log10(lrs[i - 1]))
        for i in range(lo, min(hi, len(lrs) - 1))
    ]
    steepest = lrs[lo + min(range(len(slopes)), key=slopes.__getitem__)]
    lowest = min(range(len(smoothed)), key=smoothed.__getitem__)
    edge = None
    if smoothed[lowest] > (1 - FLAT) * smoothed[lo]:
        half = max(1, len(lrs) // 20)  # a window of a tenth of the steps
        median = [statistics.median(losses[max(0, i - half) : i + half + 1]) for i in range(len(lrs))]
        bottom = min(range(len(median)), key=median.__getitem__)
        climbs = (i for i in range(bottom, len(lrs)) if median[i] > (1 + RISE) * median[bottom])
        edge = lrs[max(bottom, next(climbs, len(lrs)) - 1)]
    return steepest, lrs[lowest], edge


def diverges(losses: list[float]) -> bool:
    """Whether the curve's last step ends the range: its loss is not finite, or (once the average
    has settled for five steps) the smoothed loss is DIVERGED times its minimum."""
    smoothed = smooth([x if math.isfinite(x) else math.inf for x in losses])
    return not math.isfinite(losses[-1]) or (len(losses) > 5 and smoothed[-1] > DIVERGED * min(smoothed))


def endless_batches(loader, epoch: int):
    """The stage's loader, epoch after epoch in the trainer's order, for as many steps as asked."""
    while True:
        loader.sampler.set_epoch(epoch, start=0)
        yield from loader
        epoch += 1


def sweep_lrs(trainer, lrs: list[float], on_step=lambda i, lr, loss: None) -> tuple[list, list]:
    """One TrainStep update per LR in `lrs` (each over the run's accumulation window), every group's
    LR set by the trainer's set_lrs from a constant plan at that LR; stops once the smoothed loss
    diverges or turns non-finite. Returns (lrs tried, their losses)."""
    from ..engine.optim import set_lrs

    step, plan, epoch = trainer.step, trainer.plan, trainer.first_epoch
    accum, micro = trainer.cfg.optim.accumulation_steps, trainer.loader_batch
    params, clip = step.trainable(), trainer.cfg.optim.grad_clip
    batches = endless_batches(trainer.loader, epoch)
    step.wrapped.train()
    tried, losses = [], []
    for i, lr in enumerate(lrs):
        flat = dataclasses.replace(
            plan, lr=(lr, lr), scheduler="constant", warmup_epochs=0.0, unfreeze_warmup_epochs=0.0
        )
        set_lrs(step.optimizer, flat, epoch, 0, 1)
        window = 0.0
        for k in range(accum):
            batch = next(batches)
            share = batch["image"].shape[0] / (micro * accum)
            loss, _, _ = step.backward(batch, share, sync=k == accum - 1)
            window += loss * share
        step.gradient_norm(params, clip)
        step.update()
        value = float(window)  # the curve needs every step's loss: one read per step, as the trainer's
        tried.append(lr)
        losses.append(value)
        on_step(i, lr, value)
        if diverges(losses):
            break
    return tried, losses


def range_test(cfg: TrainConfig, steps: int, start_lr: float, end_lr: float, on_step=None) -> RangeResult:
    """Build the run `cfg` describes in a scratch folder, in the stage it would train next, and run
    the range test there; nothing is written anywhere else."""
    import time

    from ..engine.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="camodet-lr-range-") as scratch:
        run = dataclasses.replace(
            cfg.run, checkpoint_dir=scratch, tensorboard=False, overwrite=False, keep_last=0, image_every=0
        )
        trainer = Trainer(dataclasses.replace(cfg, run=run))
        epoch = trainer.first_epoch
        if epoch > trainer.plan.epochs:
            raise ConfigError(
                f"{cfg.run.resume_from} has trained all {trainer.plan.epochs} epochs: there is no next "
                f"stage to test; raise --epochs"
            )
        started = time.monotonic()
        trainer.before_train()
        trainer.enter_stage(epoch)
        tried, losses = sweep_lrs(
            trainer, exponential_lrs(start_lr, end_lr, steps), on_step or (lambda *a: 0)
        )
        seconds = time.monotonic() - started
        stage = trainer.stage
    finite = [x if math.isfinite(x) else float("inf") for x in losses]
    smoothed = smooth(finite)
    diverged = tried[-1] if diverges(losses) else None  # the last step included
    kept = len(tried) - 1 if diverged is not None else len(tried)  # the diverged point is not a candidate
    steepest, minimum, edge = suggest(tried[:kept], smoothed[:kept], finite[:kept])
    return RangeResult(stage, epoch, tried, losses, smoothed, steepest, minimum, edge, diverged, seconds)


def describe(result: RangeResult) -> str:
    """What the test found, in words: the two suggestions and where the loss diverged."""
    end = (
        f"the loss diverged at LR {result.diverged_at:.3g}"
        if result.diverged_at is not None
        else f"the loss did not diverge up to LR {result.lrs[-1]:.3g} (raise --end-lr to find where it does)"
    )
    if result.edge is None:
        rule = f"  {result.rule}: LR {result.steepest:.3g}  <- suggested {result.flag}\n"
    else:
        rule = (
            f"  the smoothed loss never falls {FLAT:.0%} below where it started (these weights are "
            f"already trained for this stage), so its steepest descent ({result.steepest:.3g}) is noise\n"
        )
        if result.climb_beyond_range:
            rule += (
                f"  the loss (running median) never climbs {RISE:.0%} up to LR {result.lrs[-1]:.3g}: the "
                f"range is too short to find the edge (raise --end-lr); until then the range's end: "
                f"{result.edge:.3g}  <- suggested {result.flag}\n"
            )
        else:
            rule += (
                f"  last LR before the loss (running median) climbs {RISE:.0%}: {result.edge:.3g}  "
                f"<- suggested {result.flag}\n"
            )
    return (
        f"stage {result.stage} (epoch {result.epoch}), {len(result.lrs)} steps in "
        f"{result.seconds:.0f} s: {end}\n"
        + rule
        + f"  loss minimum at LR {result.minimum:.3g}; divided by {SAFETY:g} for safety: {result.safe:.3g}"
    )


def plot(result: RangeResult, path: str) -> None:
    """Loss against LR (log axis): the raw steps faint, the smoothed curve, both suggestions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(result.lrs, result.losses, color="0.75", lw=0.8, label="step loss")
    ax.plot(result.lrs, result.smoothed, color="C0", lw=1.8, label="smoothed loss")
    at = {lr: s for lr, s in zip(result.lrs, result.smoothed)}
    ax.plot(
        [result.suggested],
        [at[result.suggested]],
        "o",
        color="C3",
        label=f"{result.rule}: {result.suggested:.2g}",
    )
    ax.axvline(result.safe, color="C2", ls="--", lw=1, label=f"minimum / {SAFETY:g} = {result.safe:.2g}")
    finite = [s for s in result.smoothed if math.isfinite(s)]
    ax.set_ylim(min(finite) * 0.95, min(max(finite), DIVERGED * min(finite)) * 1.05)
    ax.set_xscale("log")
    ax.set_xlabel(f"learning rate ({result.flag}; backbone groups at --backbone-lr-mult of it)")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test, stage {result.stage}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result: RangeResult, out_dir: str) -> dict:
    """lr_range.png (the plot), lr_range.yaml (the suggestion, for train --config) and
    lr_range.json (the curve); returns their paths."""
    import yaml

    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"lr_range.{k}") for k in ("png", "yaml", "json")}
    plot(result, paths["png"])
    key = "lr" if result.stage == 1 else "stage2_lr"
    with open(paths["yaml"], "w") as fh:
        fh.write(f"# camodet tune lr: {result.rule} in stage {result.stage}\n")
        yaml.safe_dump({"optim": {key: float(f"{result.suggested:.3g}")}}, fh, sort_keys=False)
    with open(paths["json"], "w") as fh:
        json.dump(result.to_dict(), fh, indent=1)
    return paths


def lr_range_command(opts: TuneLROptions, argv: list[str], program: list[str]) -> int:
    """`camodet tune lr`: the test with progress lines, its outputs, and the `train` command
    (`argv`: the flags it was given, less the test's own) with the suggested LR."""
    from .commands import train_command

    def progress(i: int, lr: float, loss: float) -> None:
        if (i + 1) % 10 == 0:
            print(f"  step {i + 1}/{steps}: LR {lr:.3g}, loss {loss:.4f}", flush=True)

    t = opts.test
    steps = t.steps
    result = range_test(opts.train, t.steps, t.start_lr, t.end_lr, on_step=progress)
    paths = write_outputs(result, t.out)
    key = "optim.lr" if result.stage == 1 else "optim.stage2_lr"
    own = flags(RangeTestSettings)  # the test's own flags, not train's
    command = train_command(program, argv, {key: float(f"{result.suggested:.3g}")}, drop=own)
    print(describe(result))
    print(f"wrote {paths['png']} (loss against LR), {paths['yaml']} (for train --config), {paths['json']}")
    print(f"train with it:\n  {command}")
    return 0
