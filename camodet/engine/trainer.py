"""The training loop: stage plan, accumulation, AMP, EMA, validation, checkpoints,
exact resume and warm restart. Reads top to bottom: `train()` is the story."""

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from tqdm import tqdm

from ..config import TrainConfig, save_yaml
from ..data.dataset import CODDataset
from ..data.layouts import gather
from ..losses import total_loss
from ..metrics import Evaluator, mean_records, to_uint8
from ..models import build_model
from . import distributed, history
from .checkpoint import CheckpointError, atomic_save, check_arch, load_checkpoint, load_matching
from .loaders import split_train_val, train_loader, val_loader
from .optim import build_optimizer, set_lrs
from .plan import Plan, make_plan

log = logging.getLogger("camodet")

# Settings that do not change what a run computes; a resume that differs only in
# these is still an exact continuation.
NOT_HYPERPARAMETERS = {"run.checkpoint_dir", "run.resume_from", "run.init_from", "run.device", "run.log_every",
                       "run.use_ddp", "run.keep_last", "data.num_workers", "data.skip_bad_files"}


@dataclass
class State:
    epoch: int = 0            # last completed epoch
    global_step: int = 0
    best_iou: float = -math.inf
    best_epoch: int = 0
    metrics: dict | None = None


def pick_device(name: str, d: distributed.Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{d.local_rank}"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or setting == "off":
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def changed_settings(saved: dict, current: dict) -> list[str]:
    a, b = flat(saved), flat(current)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in NOT_HYPERPARAMETERS and a.get(k) != b.get(k)]


def checkpoint_dict(model, ema, optimizer, scaler, state: State, stage: int, cfg: TrainConfig,
                    best: bool) -> dict:
    raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt = {
        "format": "camodet-checkpoint-v1",
        "model_state_dict": raw,
        "optimizer_state_dict": optimizer.state_dict(),
        "scaler_state_dict": scaler.state_dict(),
        "rng_state": {"torch": torch.get_rng_state(),
                      "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "epoch": state.epoch, "global_step": state.global_step, "stage": stage,
        "best_iou": state.best_iou, "best_epoch": state.best_epoch,
        "metrics": state.metrics or {}, "config": cfg.to_dict(), "weights": "raw",
    }
    if ema is not None:
        ckpt["ema_state_dict"] = ema.module.state_dict()
        if best:  # best_model.pth holds the weights that were validated: the EMA
            ckpt["model_state_dict"], ckpt["raw_model_state_dict"] = ckpt["ema_state_dict"], raw
            ckpt["weights"] = "ema"
    return ckpt


def validate(model, loader, device, dtype, d: distributed.Dist) -> dict:
    """IoU, Dice, MAE, S-measure at each GT's original size, every image once over all ranks."""
    evaluator = Evaluator(full=False)
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for batch in loader:
            logits = model(batch["image"].to(device, non_blocking=True)).logits.float()
            for j, gt in enumerate(batch["gt"]):
                up = F.interpolate(logits[j:j + 1], size=gt.shape, mode="bilinear", align_corners=False)
                evaluator.step(to_uint8(torch.sigmoid(up)[0, 0].cpu().numpy()), gt, str(int(batch["index"][j])))
    records = [r for part in distributed.gather_objects(evaluator.records, d) for r in part]
    return mean_records(records)


def train(cfg: TrainConfig) -> State:
    d = distributed.init("cuda" if cfg.run.device != "cpu" and torch.cuda.is_available() else "cpu")
    device = pick_device(cfg.run.device, d)
    dtype = amp_dtype(cfg.optim.amp, device)
    torch.manual_seed(cfg.run.seed)
    run_dir = cfg.run.checkpoint_dir
    say = log.info if d.is_main else log.debug

    # Data: validation carved from the training images, seeded.
    samples = gather(cfg.data.dataset_path, "train", cfg.data.include_noncam, cfg.data.skip_bad_files,
                     cfg.data.images, cfg.data.masks)
    train_samples, val_samples = split_train_val(samples, cfg.data.val_fraction, cfg.run.seed)
    train_set = CODDataset(train_samples, cfg.data.img_size, train=True, skip_bad_files=cfg.data.skip_bad_files)
    val_set = CODDataset(val_samples, cfg.data.img_size, train=False, skip_bad_files=cfg.data.skip_bad_files)
    say(f"data: {len(train_samples)} training / {len(val_samples)} validation images from "
        f"{', '.join(cfg.data.dataset_path or [cfg.data.images])}")

    # Model, then resume or initialise before anything copies its weights (EMA, DDP).
    model = build_model(cfg.model).to(device)
    state, resume_ckpt, restart_epoch = State(), None, None
    if cfg.run.resume_from:
        resume_ckpt = load_checkpoint(cfg.run.resume_from)
        check_arch(resume_ckpt, cfg.to_dict()["model"], cfg.run.resume_from)
        model.load_state_dict(resume_ckpt.get("raw_model_state_dict", resume_ckpt["model_state_dict"]))
        changes = changed_settings(resume_ckpt.get("config", {}), cfg.to_dict())
        state.epoch = int(resume_ckpt["epoch"])
        state.global_step = int(resume_ckpt.get("global_step", 0))
        same_dir = os.path.isdir(run_dir) and os.path.samefile(os.path.dirname(os.path.abspath(cfg.run.resume_from)), run_dir)
        if same_dir:
            state.best_iou = float(resume_ckpt.get("best_iou", -math.inf))
            state.best_epoch = int(resume_ckpt.get("best_epoch", 0))
        if changes:
            restart_epoch = state.epoch + 1
            say(f"warm restart from {cfg.run.resume_from} (epoch {state.epoch}): weights and EMA loaded, "
                f"schedule re-planned from epoch {restart_epoch}; changed: " + "; ".join(changes))
        else:
            say(f"resuming {cfg.run.resume_from} exactly after epoch {state.epoch}")
    elif cfg.run.init_from:
        init = load_checkpoint(cfg.run.init_from)
        loaded, total = load_matching(model, init.get("raw_model_state_dict", init["model_state_dict"]))
        say(f"init-from {cfg.run.init_from}: loaded {loaded} of {total} tensors (name and shape match)")

    plan = make_plan(cfg, model.backbone.num_groups, restart_epoch)
    optimizer = build_optimizer(model, cfg.optim.weight_decay, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ema = ModelEmaV3(model, decay=cfg.optim.ema_decay) if cfg.optim.use_ema else None
    if resume_ckpt is not None:
        if ema is not None and "ema_state_dict" in resume_ckpt:
            ema.module.load_state_dict(resume_ckpt["ema_state_dict"])
        if restart_epoch is None:  # exact: everything that moves comes back
            optimizer.load_state_dict(resume_ckpt["optimizer_state_dict"])
            scaler.load_state_dict(resume_ckpt["scaler_state_dict"])
            torch.set_rng_state(resume_ckpt["rng_state"]["torch"])
            if torch.cuda.is_available() and resume_ckpt["rng_state"]["cuda"]:
                torch.cuda.set_rng_state_all(resume_ckpt["rng_state"]["cuda"])
        del resume_ckpt

    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if d.is_main:
        os.makedirs(run_dir, exist_ok=True)
        save_yaml(cfg, os.path.join(run_dir, "config.yaml"))
        if restart_epoch is not None:
            history.append(metrics_path, {"type": "warm_restart", "epoch": restart_epoch,
                                          "from": cfg.run.resume_from, "changed": changes})

    ddp_model, frozen, stage, loader_batch = model, None, None, None
    for epoch in range(state.epoch + 1, plan.epochs + 1):
        # Stage and trainable set come from the plan; DDP is re-wrapped when the set changes.
        if plan.frozen_groups(epoch) != frozen:
            frozen = plan.frozen_groups(epoch)
            model.set_frozen_groups(set(frozen))
            ddp_model = distributed.wrap(model, d, device)
            if stage is not None and plan.stage(epoch) == stage and d.is_main:
                trainable = sorted(set(range(plan.num_groups)) - frozen)
                say(f"epoch {epoch}: backbone groups {trainable} now train")
                history.append(metrics_path, {"type": "unfreeze", "epoch": epoch, "trainable": trainable})
        if plan.stage(epoch) != stage:
            stage = plan.stage(epoch)
            loader_batch = cfg.optim.batch_size if stage == 1 else cfg.stage2_batch_size
            effective = loader_batch * cfg.optim.accumulation_steps * d.world
            trainable = sorted(set(range(plan.num_groups)) - frozen)
            say(f"stage {stage} from epoch {epoch}: batch {loader_batch} x accumulation "
                f"{cfg.optim.accumulation_steps} x {d.world} process(es) = effective batch {effective}; "
                f"peak lr {plan.lr[stage - 1]:g}; backbone groups training: {trainable or 'none'}")
            if d.is_main:
                history.append(metrics_path, {"type": "stage", "epoch": epoch, "stage": stage,
                                              "batch_size": loader_batch, "effective_batch": effective,
                                              "trainable": trainable})

        loader = train_loader(train_set, loader_batch, cfg.run.seed, epoch, d.rank, d.world,
                              cfg.data.num_workers, pin_memory=device.type == "cuda")
        t0 = time.time()
        stats = train_one_epoch(ddp_model, model, ema, optimizer, scaler, loader, plan, epoch, state, cfg,
                                device, dtype, d)
        seconds = time.time() - t0

        eval_model = ema.module if ema is not None else model
        val = validate(eval_model, val_loader(val_set, loader_batch, d.rank, d.world, cfg.data.num_workers),
                       device, dtype, d) if len(val_set) else {}
        state.epoch = epoch
        state.metrics = {"loss": stats["loss"], "lr": stats["lr"], **{f"val_{k}": v for k, v in val.items()}}
        iou = val.get("IoU", float("nan"))
        improved = math.isfinite(iou) and iou > state.best_iou
        if improved:
            state.best_iou, state.best_epoch = iou, epoch

        if d.is_main:
            last = checkpoint_dict(model, ema, optimizer, scaler, state, stage, cfg, best=False)
            atomic_save(last, os.path.join(run_dir, "last.pth"))
            if cfg.run.keep_last > 0:
                keep_numbered(run_dir, epoch, cfg.run.keep_last, lambda p: atomic_save(last, p))
            if improved:
                atomic_save(checkpoint_dict(model, ema, optimizer, scaler, state, stage, cfg, best=True),
                            os.path.join(run_dir, "best_model.pth"))
            history.append(metrics_path, {"type": "epoch", "epoch": epoch, "stage": stage,
                                          "global_step": state.global_step, "time_s": round(seconds, 3),
                                          "images_per_s": stats["images_per_s"], **stats["parts"],
                                          "loss": stats["loss"], "lr": stats["lr"],
                                          "expert_usage": stats["expert_usage"],
                                          "val": val, "best_iou": state.best_iou, "best_epoch": state.best_epoch})
            print(f"Epoch {epoch}: Loss: {stats['loss']:.4f} | IoU: {iou:.4f} | LR: {stats['lr']:.6f} | "
                  f"stage {stage} | {seconds:.1f}s | {stats['images_per_s']:.1f} img/s"
                  + (" | best" if improved else ""), flush=True)
    if d.enabled:
        distributed.check_in_sync(model, d)
        say(f"all {d.world} ranks hold identical parameters")
    distributed.barrier(d)
    distributed.shutdown(d)
    return state


def keep_numbered(run_dir: str, epoch: int, keep: int, save) -> None:
    """epoch_N.pth for the last `keep` epochs, ordered by N as a number (epoch_10 after epoch_9)."""
    save(os.path.join(run_dir, f"epoch_{epoch}.pth"))
    numbered = sorted((int(f[6:-4]), f) for f in os.listdir(run_dir)
                      if f.startswith("epoch_") and f.endswith(".pth") and f[6:-4].isdigit())
    for _, f in numbered[:-keep]:
        os.unlink(os.path.join(run_dir, f))


def train_one_epoch(ddp_model, model, ema, optimizer, scaler, loader, plan: Plan, epoch: int, state: State,
                    cfg: TrainConfig, device, dtype, d: distributed.Dist) -> dict:
    """One pass over the loader. Each micro-batch loss is weighted by its share of the
    images in its accumulation window, so a short last window (or a short last
    micro-batch) still gives the mean over exactly the images it saw. No host sync except every log_every steps."""
    ddp_model.train()
    accum = cfg.optim.accumulation_steps
    micro_total = len(loader)
    steps_per_epoch = math.ceil(micro_total / accum)
    params = list(model.parameters())
    loss_sum = torch.zeros((), device=device)
    part_sums: dict[str, torch.Tensor] = {}
    usage_sum = None
    images, lr = 0, 0.0
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if d.is_main else True)
    t0 = time.time()
    per_rank, micro_batch = len(loader.sampler), loader.batch_size
    for i, batch in enumerate(bar):
        step = i // accum
        # Images in this optimizer step's window: only the epoch's last micro-batch can be short.
        window_images = min(per_rank, (step + 1) * accum * micro_batch) - step * accum * micro_batch
        boundary = (i + 1) % accum == 0 or i == micro_total - 1
        if i % accum == 0:
            lr = set_lrs(optimizer, plan, epoch, step, steps_per_epoch)
        image = batch["image"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        sync = contextlib.nullcontext() if boundary or not d.enabled else ddp_model.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out = ddp_model(image)
            loss, parts = total_loss(out, mask, model.side_weights, cfg.optim.moe_loss_weight)
            scaler.scale(loss * (image.shape[0] / window_images)).backward()
        if boundary:
            if cfg.optim.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            state.global_step += 1
            if ema is not None:
                ema.update(model, step=state.global_step)
        n = image.shape[0]
        images += n
        loss_sum += loss.detach() * n
        for k, v in parts.items():
            part_sums[k] = part_sums.get(k, 0) + v * n
        usage = torch.stack(out.expert_usage) if out.expert_usage else None
        usage_sum = usage if usage_sum is None else usage_sum + usage
        if boundary and state.global_step % cfg.run.log_every == 0 and bar.disable is False:
            bar.set_postfix(loss=f"{(loss_sum / images).item():.4f}", lr=f"{lr:.2e}")
    bar.close()
    elapsed = time.time() - t0
    mean_loss = distributed.all_reduce_mean(loss_sum / max(images, 1), d).item()
    return {
        "loss": mean_loss,
        "parts": {f"loss_{k}": float(v / max(images, 1)) for k, v in part_sums.items()},
        "lr": lr,
        "images_per_s": images * d.world / max(elapsed, 1e-9),
        "expert_usage": (usage_sum / max(micro_total, 1)).tolist() if usage_sum is not None else [],
    }
