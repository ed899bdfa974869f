"""The training loop: stage plan, accumulation, AMP, EMA, validation, checkpoints,
exact resume (also mid-epoch) and warm restart, divergence guard with rollback,
graceful stop on SIGINT/SIGTERM and a stall watchdog. Reads top to bottom:
`train()` is the story."""

import dataclasses
import functools
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import TrainConfig, save_yaml
from ..data.cache import cached_samples, default_cache_dir
from ..data.dataset import CODDataset
from ..data.splits import readable_samples, split_train_val, training_samples
from ..evaluation.metrics import Evaluator, mean_records, to_uint8
from ..fields import parse_duration
from ..launch import own_device, resolve_workers
from ..models import build_model
from ..models.device import amp_dtype, autocast_name, tune_kernels
from ..runs.checkpoint import (
    RunState,
    TrainingCheckpoint,
    load_checkpoint,
    load_matching,
    model_weights,
    nonfinite_tensors,
)
from ..runs.folder import BEST_METRIC, RunFolder, is_better
from ..runs.resume import open_resume, settle_best
from ..tracking.hook import TrackerHook
from . import distributed
from .guard import OVERFLOW, ROLLBACK, SKIP, STEP, DivergenceError, DivergenceGuard
from .hooks import (
    Checkpointer,
    ConsoleReporter,
    EpochResult,
    Hook,
    MetricsLogger,
    RunHistory,
    hooks_around_training,
    where_to_resume,
)
from .interrupt import StopRequest, requeue_slurm_job, signal_number
from .loaders import (
    EpochSampler,
    input_normalization,
    loader_worker_failures,
    train_loader,
    val_loader,
)
from .monitor import TensorBoard
from .optim import set_lrs
from .schedule import Plan, make_plan, uncertainty_weight
from .state import EpochProgress, restore, snapshot
from .step import TrainStep, build_train_step
from .timing import LoopClock
from .watchdog import StallWatchdog, worker_init

log = logging.getLogger("camodet")


@dataclass
class Outcome:
    """How a pass over (the rest of) an epoch ended."""

    action: str = "done"  # done | rollback | stopped
    reason: str = ""
    step: int = 0
    files: list = dataclasses.field(default_factory=list)  # images of the windows that went wrong
    timing: dict | None = None  # LoopClock.summary() of the pass


@dataclass
class PassContext:
    """What a pass over an epoch (EpochPass) works with besides its step, loader and progress;
    the Trainer makes one per epoch (`Trainer.pass_context`)."""

    plan: Plan  # each optimizer step's LR
    state: RunState  # global_step, lr_scale
    guard: DivergenceGuard  # each window's verdict
    stop: StopRequest  # signals, --time-limit
    watchdog: StallWatchdog  # heartbeats; the loader a stall report names
    tb: TensorBoard
    record: Callable[[dict], None]  # an event to metrics.jsonl
    d: distributed.Dist
    accumulation_steps: int
    grad_clip: float
    log_every: int  # optimizer steps between TensorBoard points


def pick_device(name: str, d: distributed.Dist) -> torch.device:
    """Each torchrun process on its own GPU, cuDNN's kernels tuned for the fixed input size."""
    device = own_device(name, d)
    tune_kernels(device)
    return device


def validate(model, loader, device, dtype, d: distributed.Dist, beat=lambda where: None) -> dict:
    """IoU, Dice, MAE, S-measure at each GT's original size, every image once over all ranks."""
    evaluator = Evaluator(full=False)
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for i, batch in enumerate(loader):
            beat(f"validation batch {i + 1}")
            logits = model(batch["image"].to(device, non_blocking=True)).logits.float()
            for j, gt in enumerate(batch["gt"]):
                up = F.interpolate(logits[j : j + 1], size=gt.shape, mode="bilinear", align_corners=False)
                evaluator.step(
                    to_uint8(torch.sigmoid(up)[0, 0].cpu().numpy()), gt, str(int(batch["index"][j]))
                )
    records = [r for part in distributed.gather_objects(evaluator.records, d) for r in part]
    return mean_records(records)


class Trainer:
    """One training run, built once from the config; `run()` is the loop. Its attributes are
    what a run holds (the table of contents):

    cfg, d (the processes), device, dtype (autocast), workers: where it runs;
    folder (the run folder), history (metrics.jsonl); train_set, val_set: the data;
    step (the train step: build_train_step's), and its model, ema, optimizer, scaler;
    checkpoint (what a save holds); plan (stages, trainable groups, LR), state (the counters a
    checkpoint carries), guard (divergence); stop (signals, --time-limit), watchdog (stalls),
    tb (TensorBoard); hooks: the trainer's own (checkpointer, metrics, console) then those given
    (`hooks=`: trackers, a sweep's pruning). Entering a stage sets frozen, stage, loader."""

    def __init__(self, cfg: TrainConfig, hooks: Sequence[Hook] = ()):
        self.cfg = cfg
        self.start_processes()
        resume = self.load_data()
        self.make_model(resume)
        restart_epoch = self.load_resume(resume) if resume is not None else None
        changes = resume.changes if resume is not None else None
        del resume  # every tensor is loaded: free the file's copy
        self.plan = make_plan(cfg, self.model.backbone.num_groups, restart_epoch, self.state.schedule_start)
        self.state.schedule_start = self.plan.schedule_start
        self.open_history(restart_epoch, changes)
        self.frozen, self.stage, self.loader_batch, self.loader = None, None, None, None
        self.first_epoch = self.position.epoch if self.position is not None else self.state.epoch + 1
        if self.first_epoch > self.plan.epochs:
            self.say(
                f"nothing to train: {cfg.run.resume_from} has finished all {self.plan.epochs} epochs; "
                f"raise --epochs to train on (a warm restart)"
            )
        self.open_monitors(hooks)

    def run(self) -> RunState:
        """The loop: for each epoch, enter its stage, train the pass (rolling back on
        divergence), end the epoch (validate, best, hooks: save, record, report), stop if asked."""
        dead_worker = loader_worker_failures(functools.partial(where_to_resume, self.folder.last))
        hooks = hooks_around_training(self.hooks if self.d.is_main else (), self)
        with dead_worker, self.stop, self.watchdog, self.tb, hooks:
            self.before_train()
            for epoch in range(self.first_epoch, self.plan.epochs + 1):
                self.watchdog.beat(f"start of epoch {epoch}")
                self.enter_stage(epoch)
                progress, outcome = self.train_pass(epoch)
                if outcome.action == "stopped":
                    self.stop_inside_epoch(epoch, progress)
                    break
                self.end_epoch(epoch, progress, outcome)
                if self.stop_requested(epoch):
                    break
        self.after_train()
        return self.state

    # -- building the run -------------------------------------------------------------------

    def start_processes(self) -> None:
        """Processes, device, precision and workers; the run folder claimed (by rank 0)."""
        cfg = self.cfg
        # A group that a caller started (a sweep's trials share one) outlives this run: it ends it.
        self.owns_group = not torch.distributed.is_initialized()
        self.d = d = distributed.init(
            "cuda" if cfg.run.device != "cpu" and torch.cuda.is_available() else "cpu"
        )
        self.device = pick_device(cfg.run.device, d)
        self.workers = resolve_workers(cfg.data.num_workers, self.device.type)  # auto -> a number
        self.dtype = amp_dtype(cfg.optim.amp, self.device)
        torch.manual_seed(cfg.run.seed)
        self.folder = RunFolder(cfg.run.checkpoint_dir)
        self.say = log.info if d.is_main else log.debug
        if d.enabled:
            self.say(d.describe())
        inputs = {"--init-from": cfg.run.init_from, "--pretrained-path": cfg.model.pretrained_path}
        self.folder.claim(cfg.run.resume_from, cfg.run.overwrite, remove=d.is_main, reads=inputs)
        distributed.barrier(d)

    def training_samples(self) -> list:
        """The training images (through the cache when asked), before the validation split."""
        cfg, d = self.cfg, self.d
        samples = training_samples(cfg.data)
        if not cfg.data.cache:
            return samples
        cache_dir = os.path.expandvars(cfg.data.cache_dir or default_cache_dir())  # '$TMPDIR/x': per node
        cache = functools.partial(
            cached_samples,
            samples,
            cfg.data.img_size,
            cache_dir,
            self.workers,
            skip_bad_files=cfg.data.skip_bad_files,
        )
        # Written once where it is stored: by rank 0 on a shared folder, by each node's first
        # process on node-local scratch; the others read it after the barrier (it appears whole).
        if d.local_rank == 0 if not distributed.folder_is_shared(cache_dir, d) else d.is_main:
            cache()
        distributed.barrier(d)
        return cache()

    def load_data(self):
        """Validation carved from the training images, seeded; the resume checkpoint read once
        (refused here if it is another architecture): its normalisation decides the datasets'."""
        cfg, skip = self.cfg, self.cfg.data.skip_bad_files
        train_samples, val_samples = split_train_val(
            self.training_samples(), cfg.data.val_fraction, cfg.run.seed
        )
        if skip:
            val_samples = readable_samples(val_samples)
        resume = open_resume(cfg, self.d.world, autocast_name(self.dtype)) if cfg.run.resume_from else None
        # the backbone's own statistics (a resumed run: its checkpoint's)
        self.norm = norm = input_normalization(cfg, resume.ckpt if resume else None)
        self.train_set = CODDataset(
            train_samples,
            cfg.data.img_size,
            train=True,
            skip_bad_files=skip,
            norm=norm,
            augment=cfg.data.augment,
        )
        self.val_set = CODDataset(val_samples, cfg.data.img_size, train=False, skip_bad_files=skip, norm=norm)
        self.say(
            f"data: {len(train_samples)} training / {len(val_samples)} validation images from "
            f"{', '.join(cfg.data.dataset_path or [cfg.data.images])}"
        )
        auto = " (--num-workers auto)" if cfg.data.num_workers == "auto" else ""
        self.say(f"data loader: {self.workers} worker process(es){auto}")
        return resume

    def make_model(self, resume) -> None:
        """Model, then resume or initialise before anything copies its weights (EMA, DDP); a
        resume takes every weight from its checkpoint, so it never needs the network or the
        weights file. Then the train step (optimizer, grad scaler, EMA) and what a checkpoint holds."""
        cfg, d, device = self.cfg, self.d, self.device
        model_cfg = (
            dataclasses.replace(cfg.model, pretrained=False, pretrained_path=None) if resume else cfg.model
        )
        model = build_model(model_cfg).to(device)
        model.normalization = self.norm  # saved in every checkpoint
        self.state = RunState(world_size=d.world, autocast=autocast_name(self.dtype))
        self.guard = DivergenceGuard(cfg.safety.max_nonfinite_steps, cfg.safety.spike_factor)
        if resume is not None:
            model.load_state_dict(model_weights(resume.ckpt, "raw"))
            self.say(resume.describe())
        elif cfg.run.init_from:
            init = load_checkpoint(cfg.run.init_from)
            # What that run validated with (its EMA weights, if it had one), as evaluate would take.
            loaded, total = load_matching(model, model_weights(init, "auto"))
            self.say(
                f"init-from {cfg.run.init_from}: loaded {loaded} of {total} tensors (name and shape match)"
            )
        warn_random_backbone(cfg, d)
        self.step = step = build_train_step(cfg, model, device, self.dtype)
        self.model, self.ema, self.optimizer, self.scaler = step.model, step.ema, step.optimizer, step.scaler
        self.checkpoint = TrainingCheckpoint(
            self.model, self.ema, self.optimizer, self.scaler, self.state, self.guard, cfg.to_dict()
        )
        self.position = None

    def load_resume(self, resume) -> int | None:
        """Exact: everything that moves comes back; warm: weights, EMA and position. Returns the
        epoch a warm restart re-plans from (None for an exact resume)."""
        saved = self.checkpoint.load_state_dict(resume.ckpt, resume.exact, resume.same_run)
        if self.d.is_main and not settle_best(resume, self.folder):  # only rank 0 judges "best"
            self.state.best_iou, self.state.best_epoch = -math.inf, 0
        self.position = EpochProgress.from_dict(saved, self.device) if saved is not None else None
        return None if resume.exact else self.state.epoch + 1

    def open_history(self, restart_epoch: int | None, changes) -> None:
        """metrics.jsonl (earlier attempts included) and config.yaml; a warm restart is recorded."""
        cfg = self.cfg
        self.history = RunHistory(self.folder.metrics, self.d.is_main)
        if self.d.is_main:
            os.makedirs(self.folder.path, exist_ok=True)
            save_yaml(cfg, self.folder.config)
        if restart_epoch is not None:
            event = {"type": "warm_restart", "epoch": restart_epoch, "from": cfg.run.resume_from}
            self.record({**event, "changed": changes})

    def open_monitors(self, hooks: Sequence[Hook]) -> None:
        """TensorBoard, the stop request (signals, --time-limit), the stall watchdog and the hooks:
        the trainer's own, then `hooks`."""
        cfg, state = self.cfg, self.state
        self.tb = TensorBoard(
            cfg.run.tensorboard and self.d.is_main,
            self.folder.tensorboard,
            state.global_step if cfg.run.resume_from else None,
        )
        self.time_limit = parse_duration(cfg.run.time_limit) if cfg.run.time_limit else None
        self.validation_seconds = None
        self.preempt = signal_number(cfg.run.preempt_signal)
        self.stop = StopRequest(self.time_limit, (self.preempt,))
        self.watchdog = StallWatchdog(cfg.safety.stall_timeout, self.folder.stall_report)
        self.checkpointer = Checkpointer()
        self.hooks = [self.checkpointer, MetricsLogger(), ConsoleReporter(cfg.to_dict()), *hooks]

    def record(self, event: dict) -> None:
        """Append an event to the run's history (rank 0)."""
        self.history.record(event)

    @property
    def eval_model(self) -> torch.nn.Module:
        """What validation scores and best_model.pth holds: the EMA weights of an EMA run."""
        return self.ema.module if self.ema is not None else self.model

    # -- the loop's parts ------------------------------------------------------------------

    def before_train(self) -> None:
        # Before the first save is timed: model, EMA and two Adam moments at ~100 MB/s, plus a second.
        weights = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        self.stop.save_seconds = 1.0 + 4 * weights / 1e8
        self.init_fn = functools.partial(
            worker_init, self.watchdog.dump_dir, self.stop.signals, self.stop.finished
        )

    def enter_stage(self, epoch: int) -> None:
        """Stage and trainable set come from the plan; DDP is re-wrapped when the set changes,
        and each stage gets its loader (its workers persist across the stage's epochs)."""
        plan = self.plan
        if plan.frozen_groups(epoch) != self.frozen:
            self.frozen = plan.frozen_groups(epoch)
            self.model.set_frozen_groups(set(self.frozen))
            self.step.wrap(distributed.wrap(self.model, self.d, self.device))
            if self.stage is not None and plan.stage(epoch) == self.stage:
                trainable = sorted(set(range(plan.num_groups)) - self.frozen)
                self.say(f"epoch {epoch}: backbone groups {trainable} now train")
                self.record({"type": "unfreeze", "epoch": epoch, "trainable": trainable})
        if plan.stage(epoch) != self.stage:
            self.open_stage(epoch)

    def open_stage(self, epoch: int) -> None:
        """A new stage: its batch size and loader, said and recorded."""
        cfg, d, plan = self.cfg, self.d, self.plan
        self.stage = stage = plan.stage(epoch)
        self.loader_batch = batch = cfg.optim.batch_size if stage == 1 else cfg.stage2_batch_size
        self.loader = train_loader(
            self.train_set,
            batch,
            EpochSampler(len(self.train_set), cfg.run.seed, epoch, d.rank, d.world),
            self.workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=self.init_fn,
            persistent_workers=cfg.speed.persistent_workers,
        )
        effective = batch * cfg.optim.accumulation_steps * d.world
        trainable = sorted(set(range(plan.num_groups)) - self.frozen)
        self.say(
            f"stage {stage} from epoch {epoch}: batch {batch} x accumulation "
            f"{cfg.optim.accumulation_steps} x {d.world} process(es) = effective batch {effective}; "
            f"peak lr {plan.lr[stage - 1] * self.state.lr_scale:g}; backbone groups training: "
            f"{trainable or 'none'}"
        )
        event = {"type": "stage", "epoch": epoch, "stage": stage, "batch_size": batch}
        self.record({**event, "effective_batch": effective, "trainable": trainable})

    def train_pass(self, epoch: int) -> tuple[EpochProgress, Outcome]:
        """Train the epoch (or its rest, after a mid-epoch resume). On divergence, go back to
        the state at the start of this pass with a lower LR and train it again."""
        parts = (self.model, self.ema, self.optimizer, self.scaler)
        position = self.position
        progress = position if position is not None and position.epoch == epoch else EpochProgress(epoch)
        good = snapshot(*parts, self.state, progress)
        self.step.loss = dataclasses.replace(
            self.step.loss,
            uncertainty_weight=uncertainty_weight(
                self.cfg.optim.uncertainty_loss_weight, epoch, self.plan.epochs
            ),
        )
        ctx = self.pass_context()
        while True:
            outcome = train_one_epoch(self.step, self.loader, progress, ctx)
            if outcome.action == "done":
                outcome = self.check_finite(outcome, progress)
            if outcome.action != ROLLBACK:
                break
            roll_back(outcome, epoch, self.state, self.cfg, self.plan, self.folder, self.record)
            progress = restore(good, *parts, self.state, self.device)
            self.guard.after_rollback()
        if outcome.action in ("done", "stopped"):  # norm statistics, as every rank validates and saves
            distributed.sync_buffers(self.model, self.d)
            if self.ema is not None:
                distributed.sync_buffers(self.ema.module, self.d)
        if outcome.action == "done" and self.time_limit and len(self.val_set):
            outcome = self.check_time(outcome, progress)
        return progress, outcome

    def pass_context(self) -> PassContext:
        """What this epoch's pass works with, besides the step, the loader and the progress."""
        optim = self.cfg.optim
        return PassContext(
            plan=self.plan,
            state=self.state,
            guard=self.guard,
            stop=self.stop,
            watchdog=self.watchdog,
            tb=self.tb,
            record=self.record,
            d=self.d,
            accumulation_steps=optim.accumulation_steps,
            grad_clip=optim.grad_clip,
            log_every=self.cfg.run.log_every,
        )

    def check_finite(self, outcome: Outcome, progress: EpochProgress) -> Outcome:
        """A finished pass whose weights hold NaN/Inf (on any rank) is rolled back."""
        bad = nonfinite_tensors(self.model.state_dict()) + (
            nonfinite_tensors(self.ema.module.state_dict(), "ema") if self.ema is not None else []
        )
        if not any_rank(bool(bad), self.d, self.device):
            return outcome
        where = ", ".join(bad[:3]) or "on another rank"
        return Outcome(ROLLBACK, f"non-finite tensors at the end of the epoch ({where})", progress.micro_step)

    def check_time(self, outcome: Outcome, progress: EpochProgress) -> Outcome:
        """--time-limit: validation and the saves must still fit, or stop here (the pass is kept)."""
        needed = (
            self.validation_seconds
            if self.validation_seconds is not None
            else progress.seconds * len(self.val_set) / max(1, len(self.train_set))
        )
        if any_rank(self.stop.out_of_time(needed + self.stop.save_seconds), self.d, self.device):
            self.stop.timed_out = True
            return Outcome("stopped", self.stop.name, progress.micro_step)
        return outcome

    def stop_inside_epoch(self, epoch: int, progress: EpochProgress) -> None:
        """A stop inside the pass: a resumable last.pth at the position, recorded; requeued on preemption."""
        d, state = self.d, self.state
        state.interrupted = stop_reason(self.stop, d)
        progress.merge_ranks(lambda t: distributed.all_reduce_mean(t, d))
        if d.is_main:
            self.checkpointer.save(self, self.folder.last, progress=progress)
        self.record_interruption(epoch, progress.micro_step)
        self.say(
            f"{state.interrupted}: stopped inside epoch {epoch} after {progress.micro_step} "
            "micro-batches; "
            f"resumable checkpoint {self.folder.last}"
        )
        preempted = state.interrupted in (signal.Signals(self.preempt).name, "SIGTERM")
        if d.is_main and self.cfg.run.requeue_on_preempt and preempted:
            requeue_slurm_job()

    def record_interruption(self, epoch: int, micro_step: int | None) -> None:
        state = self.state
        event = {"type": "interrupted", "epoch": epoch, "micro_step": micro_step}
        self.record({**event, "global_step": state.global_step, "signal": state.interrupted})

    def end_epoch(self, epoch: int, progress: EpochProgress, outcome: Outcome) -> None:
        """Validate, update the counters and "best", then the hooks (rank 0): save, record, report."""
        validation_started = time.monotonic()
        stats = progress.stats(lambda t: distributed.all_reduce_mean(t, self.d))
        stats["images_per_s"] *= self.d.world
        val = self.validate_epoch()
        self.validation_seconds = time.monotonic() - validation_started
        state = self.state
        state.epoch = epoch
        state.metrics = {"loss": stats["loss"], "lr": stats["lr"], **{f"val_{k}": v for k, v in val.items()}}
        iou = val.get(BEST_METRIC, float("nan"))
        improved = is_better(iou, state.best_iou)
        if improved:
            state.best_iou, state.best_epoch = iou, epoch
        if self.d.is_main:
            result = EpochResult(
                epoch, self.stage, progress, outcome.timing, stats, val, improved, self.validation_seconds
            )
            for hook in self.hooks:
                hook.after_epoch(self, result)

    def validate_epoch(self) -> dict:
        if not len(self.val_set):
            return {}
        loader = val_loader(
            self.val_set, self.loader_batch, self.d.rank, self.d.world, self.workers, self.init_fn
        )
        return validate(self.eval_model, loader, self.device, self.dtype, self.d, self.watchdog.beat)

    def stop_requested(self, epoch: int) -> bool:
        """A signal during validation or saving: recorded, and the loop ends."""
        if not any_rank(self.stop.requested, self.d, self.device):
            return False
        self.state.interrupted = stop_reason(self.stop, self.d)
        self.record_interruption(epoch, None)
        return True

    def after_train(self) -> None:
        d = self.d
        if d.enabled and not self.state.interrupted:
            distributed.check_in_sync(self.model, d)
            self.say(f"all {d.world} ranks hold identical parameters")
        distributed.barrier(d)
        if self.owns_group:
            distributed.shutdown(d)


def train(cfg: TrainConfig, hooks: Sequence[Hook] = ()) -> RunState:
    """Train as `cfg` says, from scratch, a checkpoint (--resume-from, --init-from) or a
    mid-epoch position, with its trackers (--tracker) and then `hooks`; returns the run's
    counters (`interrupted` set when it stopped early)."""
    return Trainer(cfg, hooks=[TrackerHook(), *hooks]).run()


def warn_random_backbone(cfg: TrainConfig, d: distributed.Dist) -> None:
    """Stage 1 on a randomly initialised frozen backbone teaches the decoder noise: say so."""
    m, st = cfg.model, cfg.stages
    if (
        d.is_main
        and not (m.pretrained or m.pretrained_path or cfg.run.resume_from or cfg.run.init_from)
        and st.stage1_epochs > 0
        and not st.skip_stage1
    ):
        log.warning(
            "stage 1 trains the decoder on a frozen backbone that is randomly initialised; for real "
            "data pass --pretrained or --pretrained-path FILE (or --stage1-epochs 0)"
        )


def stop_reason(stop: StopRequest, d: distributed.Dist) -> str:
    """Why the run stops, the same on every rank (a signal may reach only some processes)."""
    names = [n for n in distributed.gather_objects(stop.name, d) if n]
    return names[0] if names else "SIGTERM"


def any_rank(flag: bool, d: distributed.Dist, device) -> bool:
    """True on every rank if it is true on one: decisions that change control flow must agree."""
    if not d.enabled:
        return flag
    return distributed.all_reduce_mean(torch.tensor(float(flag), device=device), d).item() > 0


def roll_back(
    outcome: Outcome,
    epoch: int,
    state: RunState,
    cfg: TrainConfig,
    plan: Plan,
    folder: RunFolder,
    record: Callable[[dict], None],
) -> None:
    """Count the rollback in `state` and lower its LR scale, or stop the run when the budget is
    spent; either way the event goes to `record` (metrics.jsonl)."""
    state.rollbacks += 1
    state.rollback_files.append(sorted(set(outcome.files)))
    event = {
        "epoch": epoch,
        "step": outcome.step,
        "global_step": state.global_step,
        "reason": outcome.reason,
        "rollbacks": state.rollbacks,
        "files": state.rollback_files[-1],
    }
    if state.rollbacks > cfg.safety.max_rollbacks:
        record({"type": "diverged", **event})
        raise DivergenceError(divergence_message(outcome, epoch, state, cfg, plan, folder))
    state.lr_scale *= cfg.safety.rollback_lr_factor
    record({"type": "rollback", **event, "lr_scale": state.lr_scale})
    log.warning(
        f"divergence at epoch {epoch}, step {outcome.step}: {outcome.reason}; rolled back to the "
        f"start of this pass (rollback {state.rollbacks} of {cfg.safety.max_rollbacks}), "
        f"LR now x{state.lr_scale:g} of the plan"
    )


def divergence_message(
    outcome: Outcome, epoch: int, state: RunState, cfg: TrainConfig, plan: Plan, folder: RunFolder
) -> str:
    """Why the run stopped, where its good checkpoints are, and what to try: the failing
    windows over the rollbacks tell a data problem (the same files) from the LR (others)."""
    stage = plan.stage(epoch)
    flag, peak = ("--lr", cfg.optim.lr) if stage == 1 else ("--stage2-lr", cfg.stage2_lr)
    suggested = peak * state.lr_scale * cfg.safety.rollback_lr_factor
    last = folder.last
    good = (
        f"last good checkpoint: {last} (epoch {state.epoch})"
        if state.epoch > 0 and os.path.isfile(last)
        else "no epoch finished, so there is no good checkpoint"
    )
    best = (
        f", best: {folder.best} (epoch {state.best_epoch}, {BEST_METRIC} {state.best_iou:.4f})"
        if state.best_epoch
        else ""
    )
    # Each rollback replays the same data at a lower LR: bad windows that hold the same files
    # every time point at those files; windows that move point at the learning rate.
    common = set.intersection(*map(set, state.rollback_files)) if state.rollback_files else set()
    if len(state.rollback_files) > 1 and common:
        shown = sorted(common)
        cause = (
            f"The same file(s) were in the failing window every time ({', '.join(shown[:4])}"
            f"{f' and {len(shown) - 4} more' if len(shown) > 4 else ''}): a data problem is likely; check "
            f"their masks ('camodet data check'), fix or remove them. If they are fine, try"
        )
    else:
        cause = (
            "The failing windows held different files each time, which points at the learning rate. Try"
            if len(state.rollback_files) > 1
            else "Try"
        )
    return (
        f"training diverged at epoch {epoch} (stage {stage}), step {outcome.step}: {outcome.reason}; "
        f"{cfg.safety.max_rollbacks} rollback(s) with the LR lowered to x{state.lr_scale:g} did not help. "
        f"{good}{best}. {cause} --resume-from {last if state.epoch > 0 else '...'} with {flag} "
        f"{suggested:.3g}"
        f"{', --grad-clip 0.5' if cfg.optim.grad_clip == 0 or cfg.optim.grad_clip > 0.5 else ''}"
        f"{' or --amp bf16' if cfg.optim.amp == 'fp16' else ''}; see {folder.metrics} for every event"
    )


def window_files(loader, window_index: list, d: distributed.Dist) -> list[str]:
    """The image files of an optimizer step's window, over all ranks (every rank calls this
    for the same verdict, so the collective is safe)."""
    samples = loader.dataset.samples
    mine = [samples[i].image for i in torch.cat(window_index).tolist()] if window_index else []
    return sorted({f for part in distributed.gather_objects(mine, d) for f in part})


class EpochPass:
    """The state of one pass over (the rest of) an epoch: the accumulation window being filled,
    the pass's counters, its progress bar and clock. `train_one_epoch` drives it."""

    def __init__(self, step: TrainStep, loader, progress: EpochProgress, ctx: PassContext):
        self.step, self.loader, self.progress, self.ctx = step, loader, progress, ctx
        self.epoch, device = progress.epoch, step.device
        step.wrapped.train()
        self.accum = ctx.accumulation_steps
        self.micro_batch = loader.batch_size
        sampler = loader.sampler
        sampler.set_epoch(self.epoch, start=progress.micro_step * self.micro_batch)
        self.per_rank = sampler.total
        self.micro_total = math.ceil(self.per_rank / self.micro_batch)
        self.steps_per_epoch = math.ceil(self.micro_total / self.accum)
        self.params = step.trainable()
        self.watched = self.params + [b for b in step.model.buffers() if b.is_floating_point()]
        self.fp16 = step.scaler.is_enabled()
        self.window_loss = torch.zeros((), device=device)
        self.window_index: list[torch.Tensor] = []  # dataset indices of this window (CPU), to name its files
        self.bad_files: list[str] = []  # files of the windows skipped in this pass
        self.step_seconds, self.step_started = 0.0, time.monotonic()
        if progress.loss_sum is None:
            progress.loss_sum = torch.zeros((), device=device)
        self.clock = LoopClock()  # from here: starting the loader's workers is part of the pass
        it = iter(loader)
        ctx.watchdog.loader_iter = it
        self.bar = tqdm(
            self.clock.wrap(it),
            total=self.micro_total,
            initial=progress.micro_step,
            desc=f"epoch {self.epoch}",
            leave=False,
            disable=None if ctx.d.is_main else True,
        )
        self.t0 = time.time()

    def add(self, i: int, batch: dict) -> bool:
        """Forward and backward of micro-batch i; True when it closes its accumulation window.
        Each loss is weighted by its share of the window's images, so a short last window
        still gives the mean over exactly the images it saw."""
        accum, micro_batch, progress = self.accum, self.micro_batch, self.progress
        k = i // accum  # the optimizer step within the epoch
        # Images in this optimizer step's window: only the epoch's last micro-batch can be short.
        window_images = min(self.per_rank, (k + 1) * accum * micro_batch) - k * accum * micro_batch
        boundary = (i + 1) % accum == 0 or i == self.micro_total - 1
        if i % accum == 0:
            ctx = self.ctx
            progress.lr = set_lrs(
                self.step.optimizer, ctx.plan, self.epoch, k, self.steps_per_epoch, ctx.state.lr_scale
            )
        n = batch["image"].shape[0]
        self.window_index.append(batch["index"])
        loss, parts, out = self.step.backward(batch, n / window_images, sync=boundary)
        self.window_loss += loss * (n / window_images)
        progress.add(n, loss, parts, out.expert_usage)
        return boundary

    def read_window(self) -> list[float]:
        """The one host synchronisation of an optimizer step: window loss, gradient norm,
        weight norm and a stop request, averaged over the ranks."""
        ctx, device = self.ctx, self.step.device
        # --time-limit: another step and the save must fit; the decision travels with this read.
        ctx.stop.out_of_time(2 * self.step_seconds)
        grad_norm = self.step.gradient_norm(self.params, ctx.grad_clip)
        check = [
            self.window_loss,
            grad_norm.float(),
            torch.nn.utils.get_total_norm(self.watched).float(),
            torch.tensor(float(ctx.stop.requested), device=device),
        ]
        check = torch.stack(check)
        if ctx.d.enabled:
            check = distributed.all_reduce_mean(check, ctx.d)
        return check.tolist()

    def end_window(self, i: int) -> Outcome | None:
        """The optimizer step that closes micro-batch i's window, as the guard rules; an
        Outcome when the pass ends here (rollback, stop), else None."""
        ctx, step, state, progress = self.ctx, self.step, self.ctx.state, self.progress
        k = i // self.accum
        loss_v, grad_v, weight_v, stop_v = self.read_window()
        verdict = ctx.guard.observe(state.global_step, loss_v, grad_v, weight_v, self.fp16)
        files = (
            window_files(self.loader, self.window_index, ctx.d) if verdict.action in (SKIP, ROLLBACK) else []
        )
        self.bad_files += files
        if verdict.action == ROLLBACK:
            step.discard()  # the rollback then restores the saved scaler
            return Outcome(ROLLBACK, verdict.reason, k, self.bad_files)
        step.update(apply=verdict.action in (STEP, OVERFLOW))
        state.global_step += 1
        self.window_loss.zero_()
        self.window_index = []
        progress.micro_step = i + 1
        self.clock.step()
        self.count(verdict, k, grad_v, files)
        ctx.watchdog.beat(f"epoch {self.epoch}, optimizer step {k + 1} of {self.steps_per_epoch}")
        self.step_seconds, self.step_started = time.monotonic() - self.step_started, time.monotonic()
        if state.global_step % ctx.log_every == 0:
            ctx.tb.step(state.global_step, loss_v, grad_v, step.optimizer)
            if self.bar.disable is False:
                self.bar.set_postfix(loss=f"{loss_v:.4f}", lr=f"{progress.lr:.2e}")
        return Outcome("stopped", ctx.stop.name, k) if stop_v > 0 else None

    def count(self, verdict, k: int, grad_v: float, files: list[str]) -> None:
        """The step's verdict in the pass's counters (and EMA after a real step); a skipped
        window is recorded with its files."""
        progress, state, step = self.progress, self.ctx.state, self.step
        if verdict.action == STEP:
            progress.grad_norm_sum += grad_v
            progress.grad_steps += 1
            if step.ema is not None:
                step.ema.update(step.model, step=state.global_step)
        elif verdict.action == OVERFLOW:
            progress.overflow += 1
        elif verdict.action == SKIP:
            progress.skipped += 1
            event = {"type": "skipped_step", "epoch": self.epoch, "step": k, "global_step": state.global_step}
            self.ctx.record({**event, "reason": verdict.reason, "files": files})
            log.warning(
                f"epoch {self.epoch}, step {k}: {verdict.reason} (files: {', '.join(files[:4])}"
                f"{' ...' if len(files) > 4 else ''})"
            )

    def close(self, outcome: Outcome) -> Outcome:
        self.bar.close()
        self.ctx.watchdog.loader_iter = None
        self.progress.seconds += time.time() - self.t0
        outcome.timing = self.clock.summary()
        return outcome


def train_one_epoch(step: TrainStep, loader, progress: EpochProgress, ctx: PassContext) -> Outcome:
    """The rest of one epoch, from `progress.micro_step`. One host read per optimizer step: the
    guard's numbers (window loss, gradient norm, weight norm, a stop request)."""
    epoch_pass = EpochPass(step, loader, progress, ctx)
    outcome = None
    for i, batch in enumerate(epoch_pass.bar, start=progress.micro_step):
        if epoch_pass.add(i, batch) and (outcome := epoch_pass.end_window(i)) is not None:
            break
    return epoch_pass.close(outcome or Outcome())
