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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from tqdm import tqdm

from ..config import TrainConfig, parse_duration, save_yaml
from ..data.cache import cached_samples, default_cache_dir
from ..data.dataset import CODDataset
from ..data.splits import readable_samples, split_train_val, training_samples
from ..evaluation.metrics import Evaluator, mean_records, to_uint8
from ..models import build_model
from ..models.device import amp_dtype, autocast_name, resolve_device, tune_kernels
from ..models.device import memory_format as device_memory_format  # the local name is the chosen format
from ..models.losses import LossSettings
from ..runs import history
from ..runs.checkpoint import (
    RunState,
    TrainingCheckpoint,
    atomic_save,
    load_checkpoint,
    load_matching,
    model_weights,
    nonfinite_tensors,
)
from ..runs.folder import BEST_METRIC, RunFolder, is_better
from ..runs.health import new_advice
from ..runs.resume import open_resume, settle_best
from . import distributed
from .guard import OVERFLOW, ROLLBACK, SKIP, STEP, DivergenceError, DivergenceGuard
from .interrupt import StopRequest, requeue_slurm_job, signal_number
from .loaders import EpochSampler, input_normalization, resolve_workers, train_loader, val_loader
from .monitor import TensorBoard, peak_memory_mb
from .optim import build_optimizer, set_lrs
from .schedule import Plan, make_plan
from .state import EpochProgress, restore, snapshot
from .step import TrainStep
from .timing import LoopClock
from .watchdog import StallWatchdog, worker_init

log = logging.getLogger("camodet")


class CompiledOrEager:
    """torch.compile'd forward that falls back to eager, once and with a message, where
    compilation fails (errors surface at the first call, not at torch.compile)."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.compiled = module, torch.compile(module)

    def __call__(self, x):
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as e:  # any backend failure: the run must not die for a speed-up
                first_line = (str(e).strip().splitlines() or [""])[0][:160]
                log.warning(
                    f"--compile: torch.compile failed ({type(e).__name__}: {first_line}); "
                    f"continuing without it"
                )
                self.compiled = None
        return self.module(x)


@dataclass
class RunContext:
    """What an epoch's pass needs besides the step and the data: the settings, the schedule,
    the run's counters, the guard, and the run-wide helpers."""

    cfg: TrainConfig
    d: distributed.Dist
    plan: Plan
    state: RunState
    guard: DivergenceGuard
    stop: StopRequest
    watchdog: StallWatchdog
    record: object  # record(event dict): appends to the run's history on rank 0
    tb: TensorBoard


@dataclass
class Outcome:
    """How a pass over (the rest of) an epoch ended."""

    action: str = "done"  # done | rollback | stopped
    reason: str = ""
    step: int = 0
    files: list = dataclasses.field(default_factory=list)  # images of the windows that went wrong
    timing: dict | None = None  # LoopClock.summary() of the pass


def pick_device(name: str, d: distributed.Dist) -> torch.device:
    """resolve_device, with each torchrun process on its own GPU."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", d.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
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


def train(cfg: TrainConfig) -> RunState:
    """Train as `cfg` says, from scratch, a checkpoint (--resume-from, --init-from) or a
    mid-epoch position; returns the run's counters (`interrupted` set when it stopped early)."""
    d = distributed.init("cuda" if cfg.run.device != "cpu" and torch.cuda.is_available() else "cpu")
    device = pick_device(cfg.run.device, d)
    workers = resolve_workers(cfg.data.num_workers, device.type)  # --num-workers auto -> a number
    dtype = amp_dtype(cfg.optim.amp, device)
    torch.manual_seed(cfg.run.seed)
    folder = RunFolder(cfg.run.checkpoint_dir)
    say = log.info if d.is_main else log.debug
    if d.enabled:
        say(d.describe())
    inputs = {"--init-from": cfg.run.init_from, "--pretrained-path": cfg.model.pretrained_path}
    folder.claim(cfg.run.resume_from, cfg.run.overwrite, remove=d.is_main, reads=inputs)
    distributed.barrier(d)

    # Data: validation carved from the training images, seeded.
    samples = training_samples(cfg.data)
    if cfg.data.cache:
        cache_dir = os.path.expandvars(cfg.data.cache_dir or default_cache_dir())  # '$TMPDIR/x': per node
        cache = functools.partial(
            cached_samples,
            samples,
            cfg.data.img_size,
            cache_dir,
            workers,
            skip_bad_files=cfg.data.skip_bad_files,
        )
        # Written once where it is stored: by rank 0 on a shared folder, by each node's first
        # process on node-local scratch; the others read it after the barrier (it appears whole).
        if d.local_rank == 0 if not distributed.folder_is_shared(cache_dir, d) else d.is_main:
            cache()
        distributed.barrier(d)
        samples = cache()
    train_samples, val_samples = split_train_val(samples, cfg.data.val_fraction, cfg.run.seed)
    if cfg.data.skip_bad_files:
        val_samples = readable_samples(val_samples)
    # Read once (and refused here if it is another architecture): its normalisation decides
    # the datasets', its state the model's.
    resume = open_resume(cfg, d.world, autocast_name(dtype)) if cfg.run.resume_from else None
    norm = input_normalization(
        cfg, resume.ckpt if resume else None
    )  # the backbone's own statistics (a resumed run: its checkpoint's)
    train_set = CODDataset(
        train_samples, cfg.data.img_size, train=True, skip_bad_files=cfg.data.skip_bad_files, norm=norm
    )
    val_set = CODDataset(
        val_samples, cfg.data.img_size, train=False, skip_bad_files=cfg.data.skip_bad_files, norm=norm
    )
    say(
        f"data: {len(train_samples)} training / {len(val_samples)} validation images from "
        f"{', '.join(cfg.data.dataset_path or [cfg.data.images])}"
    )
    say(
        f"data loader: {workers} worker "
        f"process(es){' (--num-workers auto)' if cfg.data.num_workers == 'auto' else ''}"
    )

    # Model, then resume or initialise before anything copies its weights (EMA, DDP). A resume
    # takes every weight from its checkpoint, so it never needs the network or the weights file.
    model_cfg = (
        dataclasses.replace(cfg.model, pretrained=False, pretrained_path=None) if resume else cfg.model
    )
    model = build_model(model_cfg).to(device)
    model.normalization = norm  # saved in every checkpoint
    state = RunState(world_size=d.world, autocast=autocast_name(dtype))
    guard = DivergenceGuard(cfg.safety.max_nonfinite_steps, cfg.safety.spike_factor)
    if resume is not None:
        model.load_state_dict(model_weights(resume.ckpt, "raw"))
        say(resume.describe())
    elif cfg.run.init_from:
        init = load_checkpoint(cfg.run.init_from)
        # What that run validated with (its EMA weights, if it had one), as evaluate would take.
        loaded, total = load_matching(model, model_weights(init, "auto"))
        say(f"init-from {cfg.run.init_from}: loaded {loaded} of {total} tensors (name and shape match)")

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

    if cfg.speed.grad_checkpointing:
        model.set_grad_checkpointing(True)
    memory_format = device_memory_format(cfg.speed.channels_last, device)
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(model, cfg.optim.weight_decay, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ema = ModelEmaV3(model, decay=cfg.optim.ema_decay) if cfg.optim.use_ema else None
    checkpoint = TrainingCheckpoint(model, ema, optimizer, scaler, state, guard, cfg.to_dict())
    position, restart_epoch = None, None
    if resume is not None:  # exact: everything that moves comes back; warm: weights, EMA and position
        saved = checkpoint.load_state_dict(resume.ckpt, resume.exact, resume.same_run)
        if d.is_main and not settle_best(resume, folder):  # only rank 0 judges "best" and writes it
            state.best_iou, state.best_epoch = -math.inf, 0
        position = EpochProgress.from_dict(saved, device) if saved is not None else None
        restart_epoch = None if resume.exact else state.epoch + 1
        resume = dataclasses.replace(resume, ckpt={})  # every tensor is loaded: free the file's copy
    plan = make_plan(cfg, model.backbone.num_groups, restart_epoch, state.schedule_start)
    state.schedule_start = plan.schedule_start

    # The run's history in memory (earlier attempts in this folder included), for the health advice.
    records = history.read(folder.metrics) if d.is_main else []
    cfg_dict = cfg.to_dict()

    def record(event: dict) -> None:
        if d.is_main:
            history.append(folder.metrics, event)
            records.append(event)

    if d.is_main:
        os.makedirs(folder.path, exist_ok=True)
        save_yaml(cfg, folder.config)
    if restart_epoch is not None:
        record(
            {
                "type": "warm_restart",
                "epoch": restart_epoch,
                "from": cfg.run.resume_from,
                "changed": resume.changes,
            }
        )

    def save(path: str, progress: EpochProgress | None = None) -> dict:
        started = time.monotonic()
        ckpt = checkpoint.state_dict(stage, progress.to_dict() if progress is not None else None)
        atomic_save(ckpt, path)
        stop.save_seconds = max(stop.save_seconds, time.monotonic() - started)  # what --time-limit keeps back
        return ckpt

    step = TrainStep(
        model,
        model,
        model,
        ema,
        optimizer,
        scaler,
        LossSettings.for_model(model, cfg.optim.moe_loss_weight),
        device,
        dtype,
        memory_format,
    )
    frozen, stage, loader_batch, loader = None, None, None, None
    first_epoch = position.epoch if position is not None else state.epoch + 1
    if first_epoch > plan.epochs:
        say(
            f"nothing to train: {cfg.run.resume_from} has finished all {plan.epochs} epochs; "
            f"raise --epochs to train on (a warm restart)"
        )
    tb = TensorBoard(
        cfg.run.tensorboard and d.is_main,
        folder.tensorboard,
        state.global_step if cfg.run.resume_from else None,
    )
    time_limit = parse_duration(cfg.run.time_limit) if cfg.run.time_limit else None
    validation_seconds = None
    preempt = signal_number(cfg.run.preempt_signal)
    with (
        StopRequest(time_limit, (preempt,)) as stop,
        StallWatchdog(cfg.safety.stall_timeout, folder.stall_report) as watchdog,
        tb,
    ):
        # Before the first save is timed: model, EMA and two Adam moments at ~100 MB/s, plus a second.
        stop.save_seconds = (
            1.0 + 4 * sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e8
        )
        init_fn = functools.partial(worker_init, watchdog.dump_dir, stop.signals, stop.finished)
        ctx = RunContext(cfg, d, plan, state, guard, stop, watchdog, record, tb)
        for epoch in range(first_epoch, plan.epochs + 1):
            watchdog.beat(f"start of epoch {epoch}")
            # Stage and trainable set come from the plan; DDP is re-wrapped when the set changes.
            if plan.frozen_groups(epoch) != frozen:
                frozen = plan.frozen_groups(epoch)
                model.set_frozen_groups(set(frozen))
                step.wrapped = distributed.wrap(model, d, device)
                step.forward = CompiledOrEager(step.wrapped) if cfg.speed.compile else step.wrapped
                if stage is not None and plan.stage(epoch) == stage:
                    trainable = sorted(set(range(plan.num_groups)) - frozen)
                    say(f"epoch {epoch}: backbone groups {trainable} now train")
                    record({"type": "unfreeze", "epoch": epoch, "trainable": trainable})
            if plan.stage(epoch) != stage:
                stage = plan.stage(epoch)
                loader_batch = cfg.optim.batch_size if stage == 1 else cfg.stage2_batch_size
                # One loader per stage: its workers persist across the stage's epochs.
                loader = train_loader(
                    train_set,
                    loader_batch,
                    EpochSampler(len(train_set), cfg.run.seed, epoch, d.rank, d.world),
                    workers,
                    pin_memory=device.type == "cuda",
                    worker_init_fn=init_fn,
                    persistent_workers=cfg.speed.persistent_workers,
                )
                effective = loader_batch * cfg.optim.accumulation_steps * d.world
                trainable = sorted(set(range(plan.num_groups)) - frozen)
                say(
                    f"stage {stage} from epoch {epoch}: batch {loader_batch} x accumulation "
                    f"{cfg.optim.accumulation_steps} x {d.world} process(es) = effective batch {effective}; "
                    f"peak lr {plan.lr[stage - 1] * state.lr_scale:g}; backbone groups training: "
                    f"{trainable or 'none'}"
                )
                record(
                    {
                        "type": "stage",
                        "epoch": epoch,
                        "stage": stage,
                        "batch_size": loader_batch,
                        "effective_batch": effective,
                        "trainable": trainable,
                    }
                )

            # Train the epoch (or its rest, after a mid-epoch resume). On divergence, go back to
            # the state at the start of this pass with a lower LR and train it again.
            progress = position if position is not None and position.epoch == epoch else EpochProgress(epoch)
            good = snapshot(model, ema, optimizer, scaler, state, progress)
            while True:
                outcome = train_one_epoch(step, loader, progress, ctx)
                if outcome.action == "done":
                    bad = nonfinite_tensors(model.state_dict()) + (
                        nonfinite_tensors(ema.module.state_dict(), "ema") if ema is not None else []
                    )
                    if any_rank(bool(bad), d, device):
                        outcome = Outcome(
                            ROLLBACK,
                            f"non-finite tensors at the end of the epoch "
                            f"({', '.join(bad[:3]) or 'on another rank'})",
                            progress.micro_step,
                        )
                if outcome.action != ROLLBACK:
                    break
                roll_back(outcome, epoch, ctx, folder)
                progress = restore(good, model, ema, optimizer, scaler, state, device)
                guard.after_rollback()
            if outcome.action in ("done", "stopped"):  # norm statistics, as every rank validates and saves
                distributed.sync_buffers(model, d)
                if ema is not None:
                    distributed.sync_buffers(ema.module, d)

            # --time-limit: validation and the saves must still fit, or stop here (the pass is kept).
            if outcome.action == "done" and time_limit and len(val_set):
                needed = (
                    validation_seconds
                    if validation_seconds is not None
                    else progress.seconds * len(val_set) / max(1, len(train_set))
                )
                if any_rank(stop.out_of_time(needed + stop.save_seconds), d, device):
                    stop.timed_out = True
                    outcome = Outcome("stopped", stop.name, progress.micro_step)

            if outcome.action == "stopped":
                state.interrupted = stop_reason(stop, d)
                progress.merge_ranks(lambda t: distributed.all_reduce_mean(t, d))
                if d.is_main:
                    save(folder.last, progress=progress)
                record(
                    {
                        "type": "interrupted",
                        "epoch": epoch,
                        "micro_step": progress.micro_step,
                        "global_step": state.global_step,
                        "signal": state.interrupted,
                    }
                )
                say(
                    f"{state.interrupted}: stopped inside epoch {epoch} after {progress.micro_step} "
                    "micro-batches; "
                    f"resumable checkpoint {folder.last}"
                )
                if (
                    d.is_main
                    and cfg.run.requeue_on_preempt
                    and state.interrupted in (signal.Signals(preempt).name, "SIGTERM")
                ):
                    requeue_slurm_job()
                break

            validation_started = time.monotonic()
            stats = progress.stats(lambda t: distributed.all_reduce_mean(t, d))
            stats["images_per_s"] *= d.world
            eval_model = ema.module if ema is not None else model
            val = (
                validate(
                    eval_model,
                    val_loader(val_set, loader_batch, d.rank, d.world, workers, init_fn),
                    device,
                    dtype,
                    d,
                    watchdog.beat,
                )
                if len(val_set)
                else {}
            )
            validation_seconds = time.monotonic() - validation_started
            state.epoch = epoch
            state.metrics = {
                "loss": stats["loss"],
                "lr": stats["lr"],
                **{f"val_{k}": v for k, v in val.items()},
            }
            iou = val.get(BEST_METRIC, float("nan"))
            improved = is_better(iou, state.best_iou)
            if improved:
                state.best_iou, state.best_epoch = iou, epoch

            if d.is_main:
                watchdog.beat(f"saving checkpoints of epoch {epoch}")
                last = save(folder.last)
                if cfg.run.keep_last > 0:
                    folder.keep_last(epoch, cfg.run.keep_last, functools.partial(atomic_save, last))
                if improved:
                    atomic_save(last, folder.best)
                memory_mb, memory_kind = peak_memory_mb(device)
                epoch_record = {
                    "type": "epoch",
                    "epoch": epoch,
                    "stage": stage,
                    "global_step": state.global_step,
                    "time_s": round(progress.seconds, 3),
                    "images_per_s": stats["images_per_s"],
                    **stats["parts"],
                    "loss": stats["loss"],
                    "lr": stats["lr"],
                    "lr_scale": state.lr_scale,
                    "grad_norm": stats["grad_norm"],
                    "skipped_steps": stats["skipped_steps"],
                    "overflow_steps": stats["overflow_steps"],
                    "expert_usage": stats["expert_usage"],
                    "val": val,
                    "best_iou": state.best_iou,
                    "best_epoch": state.best_epoch,
                    "peak_memory_mb": round(memory_mb, 1),
                    "memory_kind": memory_kind,
                }
                epoch_record.update(
                    outcome.timing or {}, val_time_s=round(validation_seconds, 3), num_workers=workers
                )
                record(epoch_record)
                tb.epoch(epoch, epoch_record)
                if cfg.run.image_every and (epoch % cfg.run.image_every == 0 or epoch == plan.epochs):
                    tb.panel(epoch, eval_model, val_set, device)
                scored = f"{BEST_METRIC}: {iou:.4f}" if val else "no validation"
                print(
                    f"Epoch {epoch}: Loss: {stats['loss']:.4f} | {scored} | LR: {stats['lr']:.6f} | "
                    f"stage {stage} | {progress.seconds:.1f}s | {stats['images_per_s']:.1f} img/s"
                    + (" | best" if improved else ""),
                    flush=True,
                )
                for advice in new_advice(records, cfg_dict):
                    log.warning(f"advice (epoch {advice.epoch}): {advice.message}")
            if any_rank(stop.requested, d, device):  # a signal during validation or saving
                state.interrupted = stop_reason(stop, d)
                record(
                    {
                        "type": "interrupted",
                        "epoch": epoch,
                        "micro_step": None,
                        "global_step": state.global_step,
                        "signal": state.interrupted,
                    }
                )
                break
    if d.enabled and not state.interrupted:
        distributed.check_in_sync(model, d)
        say(f"all {d.world} ranks hold identical parameters")
    distributed.barrier(d)
    distributed.shutdown(d)
    return state


def stop_reason(stop: StopRequest, d: distributed.Dist) -> str:
    """Why the run stops, the same on every rank (a signal may reach only some processes)."""
    names = [n for n in distributed.gather_objects(stop.name, d) if n]
    return names[0] if names else "SIGTERM"


def any_rank(flag: bool, d: distributed.Dist, device) -> bool:
    """True on every rank if it is true on one: decisions that change control flow must agree."""
    if not d.enabled:
        return flag
    return distributed.all_reduce_mean(torch.tensor(float(flag), device=device), d).item() > 0


def roll_back(outcome: Outcome, epoch: int, ctx: RunContext, folder: RunFolder) -> None:
    """Count the rollback and lower the LR, or stop the run when the budget is spent."""
    state, cfg, record = ctx.state, ctx.cfg, ctx.record
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
        raise DivergenceError(divergence_message(outcome, epoch, state, cfg, ctx.plan, folder))
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


def train_one_epoch(step: TrainStep, loader, progress: EpochProgress, ctx: RunContext) -> Outcome:
    """The rest of one epoch, from `progress.micro_step`. Each micro-batch loss is weighted
    by its share of the images in its accumulation window, so a short last window still
    gives the mean over exactly the images it saw. One host read per optimizer step: the
    guard's numbers (window loss, gradient norm, weight norm, a stop request)."""
    cfg, d, plan, state, guard, stop, watchdog = (
        ctx.cfg,
        ctx.d,
        ctx.plan,
        ctx.state,
        ctx.guard,
        ctx.stop,
        ctx.watchdog,
    )
    epoch, device = progress.epoch, step.device
    step.wrapped.train()
    accum = cfg.optim.accumulation_steps
    micro_batch = loader.batch_size
    sampler = loader.sampler
    sampler.set_epoch(epoch, start=progress.micro_step * micro_batch)
    per_rank = sampler.total
    micro_total = math.ceil(per_rank / micro_batch)
    steps_per_epoch = math.ceil(micro_total / accum)
    params = step.trainable()
    watched = params + [b for b in step.model.buffers() if b.is_floating_point()]
    fp16 = step.scaler.is_enabled()
    window_loss = torch.zeros((), device=device)
    window_index: list[torch.Tensor] = []  # dataset indices of this window (CPU), to name its files
    bad_files: list[str] = []  # files of the windows skipped in this pass
    step_seconds, step_started = 0.0, time.monotonic()
    if progress.loss_sum is None:
        progress.loss_sum = torch.zeros((), device=device)
    clock = LoopClock()  # from here: starting the loader's workers is part of the pass
    it = iter(loader)
    watchdog.loader_iter = it
    bar = tqdm(
        clock.wrap(it),
        total=micro_total,
        initial=progress.micro_step,
        desc=f"epoch {epoch}",
        leave=False,
        disable=None if d.is_main else True,
    )
    t0 = time.time()
    outcome = Outcome()
    for i, batch in enumerate(bar, start=progress.micro_step):
        k = i // accum  # the optimizer step within the epoch
        # Images in this optimizer step's window: only the epoch's last micro-batch can be short.
        window_images = min(per_rank, (k + 1) * accum * micro_batch) - k * accum * micro_batch
        boundary = (i + 1) % accum == 0 or i == micro_total - 1
        if i % accum == 0:
            progress.lr = set_lrs(step.optimizer, plan, epoch, k, steps_per_epoch, state.lr_scale)
        n = batch["image"].shape[0]
        window_index.append(batch["index"])
        loss, parts, out = step.backward(batch, n / window_images, sync=boundary)
        window_loss += loss * (n / window_images)
        progress.add(n, loss, parts, out.expert_usage)
        if not boundary:
            continue

        # --time-limit: another step and the save must fit; the decision travels with the host read below.
        stop.out_of_time(2 * step_seconds)
        grad_norm = step.gradient_norm(params, cfg.optim.grad_clip)
        check = [
            window_loss,
            grad_norm.float(),
            torch.nn.utils.get_total_norm(watched).float(),
            torch.tensor(float(stop.requested), device=device),
        ]
        check = torch.stack(check)
        if d.enabled:
            check = distributed.all_reduce_mean(check, d)
        loss_v, grad_v, weight_v, stop_v = check.tolist()  # the one host synchronisation of this step
        verdict = guard.observe(state.global_step, loss_v, grad_v, weight_v, fp16)
        files = window_files(loader, window_index, d) if verdict.action in (SKIP, ROLLBACK) else []
        bad_files += files
        if verdict.action == ROLLBACK:
            step.discard()  # the rollback then restores the saved scaler
            outcome = Outcome(ROLLBACK, verdict.reason, k, bad_files)
            break
        step.update(apply=verdict.action in (STEP, OVERFLOW))
        state.global_step += 1
        window_loss.zero_()
        window_index = []
        progress.micro_step = i + 1
        clock.step()
        if verdict.action == STEP:
            progress.grad_norm_sum += grad_v
            progress.grad_steps += 1
            if step.ema is not None:
                step.ema.update(step.model, step=state.global_step)
        elif verdict.action == OVERFLOW:
            progress.overflow += 1
        elif verdict.action == SKIP:
            progress.skipped += 1
            ctx.record(
                {
                    "type": "skipped_step",
                    "epoch": epoch,
                    "step": k,
                    "global_step": state.global_step,
                    "reason": verdict.reason,
                    "files": files,
                }
            )
            log.warning(
                f"epoch {epoch}, step {k}: {verdict.reason} (files: {', '.join(files[:4])}"
                f"{' ...' if len(files) > 4 else ''})"
            )
        watchdog.beat(f"epoch {epoch}, optimizer step {k + 1} of {steps_per_epoch}")
        step_seconds, step_started = time.monotonic() - step_started, time.monotonic()
        if state.global_step % cfg.run.log_every == 0:
            ctx.tb.step(state.global_step, loss_v, grad_v, step.optimizer)
            if bar.disable is False:
                bar.set_postfix(loss=f"{loss_v:.4f}", lr=f"{progress.lr:.2e}")
        if stop_v > 0:
            outcome = Outcome("stopped", stop.name, k)
            break
    bar.close()
    watchdog.loader_iter = None
    progress.seconds += time.time() - t0
    outcome.timing = clock.summary()
    return outcome
