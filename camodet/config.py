"""Typed run configuration: the single source of truth for CLI flags, YAML files
and the ``config.yaml`` written into every run folder.

No torch here: validation that needs a backbone lives in ``camodet.models``.
"""

import argparse
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value that makes no sense; the message is one line."""


_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str, flag: str = "--time-limit") -> float:
    """'8h45m', '90m', '1.5h', '3600s' or a plain number of seconds -> seconds."""
    import re

    t = str(text).strip().lower().replace(" ", "")
    parts = re.fullmatch(r"((\d+(\.\d+)?)[dhms])+", t)
    if parts:
        seconds = sum(float(v) * _DURATION_UNITS[u] for v, _, u in re.findall(r"(\d+(\.\d+)?)([dhms])", t))
    else:
        try:
            seconds = float(t)
        except ValueError:
            seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"{flag} {text!r}: give a positive duration such as 8h45m, 90m or 3600s")
    return seconds


def opt(default, help: str, flag: str | None = None, choices=None, **extra):
    """A config field with its CLI help (and optionally flag name / choices)."""
    meta = {"help": help, "flag": flag, "choices": choices, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def workers(value) -> "int | str":
    """--num-workers: a count, or 'auto' (resolved for the device where the run starts)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return int(value)


@dataclass
class DataConfig:
    """Where the images come from and how they are read."""

    dataset_path: list[str] = opt(
        [],
        "dataset root(s); layouts are detected (COD10K-v3, CAMO, NC4K, CHAMELEON, TrainDataset/TestDataset)",
        nargs="+",
    )
    images: str | None = opt(None, "image folder (with --masks) instead of a dataset root")
    masks: str | None = opt(None, "mask folder paired with --images")
    img_size: int = opt(384, "training/inference side length in pixels")
    augment: str = opt(
        "full",
        "training augmentation: full (random crop of 0.6-1 of the area, rotation up to 15 degrees, "
        "flip, colour jitter) or flip (the whole image, flipped at random: nothing else)",
        choices=["full", "flip"],
    )
    val_fraction: float = opt(0.1, "fraction of training images held out for validation (seeded)")
    include_noncam: bool = opt(False, "COD10K: also use NonCAM images (the field uses CAM only)")
    skip_bad_files: bool = opt(False, "skip unreadable or unmatched files instead of stopping")
    num_workers: workers = opt(
        "auto",
        "data-loader worker processes, or auto: on a GPU the cores "
        "less one (up to 16); on the CPU none where the compute "
        "threads need every core (see camodet/engine/loaders.py)",
    )
    cache: bool = opt(False, "decode and pre-resize the dataset once into --cache-dir; later runs read that")
    cache_dir: str | None = opt(None, "cache folder (default: ~/.cache/camodet)")


# The decoders of camodet.models.decoders, by name (here without torch, for the flag's choices).
DECODER_NAMES = ("moe", "fpn", "sinet", "zoom")


@dataclass
class ModelConfig:
    """The network: backbone, decoder, experts, deep supervision, pretrained weights."""

    backbone: str = opt("edgenext_base", "timm backbone name (any model with features_only)")
    decoder: str = opt(
        "moe",
        "decoder: moe (top-down fusion with mixture-of-experts blocks), fpn (plain feature pyramid), "
        "sinet (SINet-V2's search and group-reversal attention), zoom (ZoomNet's 0.5x/1x/1.5x "
        "mixed scales; sides a multiple of 64 px); see README, Decoders",
        choices=list(DECODER_NAMES),
    )
    pretrained: bool = opt(False, "load ImageNet weights through timm (needs network or HF cache)")
    pretrained_path: str | None = opt(None, "load backbone weights from a local .pth/.safetensors")
    # One expert (a plain residual block, no routing) by default: on real photos at an equal budget
    # 4 experts gained nothing over one (benchmarks/RESULTS.md, quality_real.py). --num-experts N turns it on.
    num_experts: int = opt(
        1, "number of experts in each mixture-of-experts block (1: no routing; moe decoder)"
    )
    top_k: int = opt(2, "experts chosen per image with --gating topk (ignored with one expert)")
    gating: str = opt("topk", "router gating", choices=["topk", "dense"])
    decoder_channels: int = opt(64, "channels of the decoder")
    deep_supervision: bool = opt(False, "train side outputs at coarser decoder scales")
    backbone_norm: str = opt(
        "train",
        "backbone BatchNorm statistics where the backbone trains: train "
        "(update them from the batch) or frozen (keep the pretrained ones; "
        "their scale and shift still train)",
        choices=["train", "frozen"],
    )


@dataclass
class OptimConfig:
    """Optimizer, batch, LR schedule, precision and EMA."""

    batch_size: int = opt(8, "stage-1 micro-batch size per process")
    stage2_batch_size: int | None = opt(None, "stage-2 micro-batch size (default: --batch-size)")
    accumulation_steps: int = opt(1, "micro-batches per optimizer step")
    lr: float = opt(4e-4, "stage-1 peak learning rate")
    stage2_lr: float | None = opt(None, "stage-2 peak learning rate (default: --lr)")
    min_lr: float = opt(1e-5, "learning rate at the last step of each stage")
    scheduler: str = opt(
        "cosine", "learning-rate schedule after warmup", choices=["cosine", "constant", "step"]
    )
    warmup_epochs: float = opt(0.0, "linear warmup at the start of each stage, in epochs")
    weight_decay: float = opt(0.01, "AdamW weight decay (never on norms and biases)")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this (0 = off)")
    backbone_lr_mult: float = opt(0.1, "backbone LR as a multiple of the stage LR")
    moe_loss_weight: float = opt(0.01, "weight of the mixture-of-experts load-balancing loss")
    boundary_gain: float = opt(
        5.0, "structure loss: a pixel at the mask's boundary weighs up to 1 + this (0: plain BCE + IoU)"
    )
    uncertainty_loss_weight: float = opt(
        0.0,
        "ZoomNet's uncertainty-aware loss, mean 1 - (2p - 1)^2, which pushes probabilities away from "
        "0.5: its weight at the last epoch, reached by a cosine ramp from 0 at the first (0: off)",
    )
    use_ema: bool = opt(False, "keep an exponential moving average of the weights")
    ema_decay: float = opt(0.999, "EMA decay per optimizer step")
    amp: str = opt(
        "auto",
        "mixed precision: auto = bf16 on Ampere and newer GPUs, fp16 with a grad scaler "
        "on older ones (T4, P100, V100), off on the CPU",
        choices=["auto", "bf16", "fp16", "off"],
    )


@dataclass
class StageConfig:
    """Stage 1 (frozen backbone) and stage 2 (progressive unfreezing) lengths."""

    epochs: int = opt(120, "total epochs over both stages")
    stage1_epochs: int = opt(30, "epochs with the backbone frozen (stage 1)")
    skip_stage1: bool = opt(False, "start in stage 2")
    progressive_unfreeze: bool = opt(False, "stage 2 unfreezes backbone stages deepest-first")
    unfreeze_warmup_epochs: float = opt(1.0, "LR warmup of a newly unfrozen backbone stage, in epochs")


@dataclass
class RunConfig:
    """The run folder, resuming, devices, logging and stopping."""

    checkpoint_dir: str = opt("runs/camodet", "run folder: checkpoints, config.yaml, metrics.jsonl")
    resume_from: str | None = opt(
        None,
        "checkpoint to resume (exact) or warm-restart from; 'auto': resume "
        "CHECKPOINT_DIR/last.pth when the folder holds one, else start (for "
        "requeued jobs)",
    )
    init_from: str | None = opt(None, "checkpoint to take matching weights from (fresh run)")
    overwrite: bool = opt(
        False,
        "replace the run already in --checkpoint-dir (its checkpoints, metrics, logs) "
        "instead of refusing to start",
    )
    seed: int = opt(42, "random seed (data split, order, augmentation, init)")
    use_ddp: bool = opt(False, "accepted for compatibility; torchrun's environment decides")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    keep_last: int = opt(0, "also keep epoch_N.pth for the last K epochs (0 = only last.pth and best)")
    log_every: int = opt(20, "optimizer steps between progress-bar and TensorBoard step updates")
    tensorboard: bool = opt(True, "write TensorBoard logs to RUN/tensorboard (needs the tensorboard package)")
    image_every: int = opt(5, "epochs between TensorBoard panels of validation predictions (0 = never)")
    tracker: list[str] = opt(
        [],
        "experiment tracker(s) to log to, wandb and/or mlflow (repeat the flag or list both): config, "
        "epoch records, events, the final export and report; offline by default (W&B offline mode, "
        "MLflow to RUN/mlflow.db)",
        nargs="+",
    )
    tracking_uri: str | None = opt(
        None, "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///RUN/mlflow.db)"
    )
    preempt_signal: str = opt(
        "USR1",
        "signal a scheduler sends ahead of preemption (SLURM: --signal=USR1@120): "
        "like SIGTERM the run saves its position and stops, with exit code 75",
    )
    requeue_on_preempt: bool = opt(
        False,
        "under SLURM, requeue the job (scontrol requeue) after saving on the "
        "preemption signal or SIGTERM; with --resume-from auto it continues",
    )
    time_limit: str | None = opt(
        None,
        "wall time this command may take, e.g. 8h45m (a notebook's hard limit): "
        "the run stops by itself early enough to finish its step and write a "
        "resumable last.pth, and prints the command that continues it",
    )


@dataclass
class SpeedConfig:
    """Speed settings that do not change what is computed."""

    channels_last: str = opt(
        "auto", "channels_last memory format (auto: on for CUDA)", choices=["auto", "on", "off"]
    )
    compile: bool = opt(False, "torch.compile the model (falls back to eager with a message where it fails)")
    grad_checkpointing: bool = opt(
        False, "recompute activations in backward (backbone, decoder, experts) to save memory"
    )
    persistent_workers: bool = opt(True, "keep data-loader workers alive between epochs of a stage")


@dataclass
class SafetyConfig:
    """The divergence guard, rollbacks and the stall watchdog."""

    max_rollbacks: int = opt(3, "rollbacks to the last good state before the run stops as diverged")
    rollback_lr_factor: float = opt(0.5, "LR multiplier applied at each rollback")
    max_nonfinite_steps: int = opt(3, "non-finite steps within 100 optimizer steps that trigger a rollback")
    spike_factor: float = opt(
        10.0, "a step loss this many times the running median triggers a rollback (0 disables)"
    )
    stall_timeout: float = opt(
        900.0,
        "seconds without a finished optimizer step before the watchdog dumps "
        "stacks and stops the run (0 disables)",
    )


@dataclass
class TrainConfig:
    """Every training setting, by section: the single source of the CLI flags,
    YAML files and the config.yaml saved in a run folder."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    stages: StageConfig = field(default_factory=StageConfig)
    run: RunConfig = field(default_factory=RunConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)

    # Resolved stage-2 values: the reference workflow treats "not given" as "same as stage 1".
    @property
    def stage2_batch_size(self) -> int:
        return self.optim.stage2_batch_size or self.optim.batch_size

    @property
    def stage2_lr(self) -> float:
        return self.optim.stage2_lr if self.optim.stage2_lr is not None else self.optim.lr

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return merge(cls(), d, source="dict")

    def validate(self, check_paths: bool = True) -> "TrainConfig":
        """Refuse settings that make no sense together, in one line naming the flag and
        the fix, before anything is loaded; `check_paths` also checks that data paths exist."""
        validate(self, check_paths=check_paths)
        return self


SECTIONS = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def _base_type(tp):
    """int for Optional[int]; list for list[str]."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return origin or tp


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _type_name(tp) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "text"}.get(tp, tp.__name__)


def _coerce(value, f: dataclasses.Field, source: str):
    """The one gate every value passes, typed on the command line or read from YAML (or a
    saved config): its type, and for fields with choices, one of them. Errors are one line
    naming the flag, where the value came from and what is allowed."""
    tp = _base_type(f.type)
    where = f"{_flag(f)}: {value!r}" + ("" if source == "the command line" else f" in {source}")
    if value is None:
        if _is_optional(f.type):
            return None
        raise ConfigError(f"{_flag(f)}: needs a value in {source} (got an empty one)")
    if tp is list:
        return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where} is not true or false")
    if callable(tp) and not isinstance(tp, type):  # a parser function such as workers()
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} is not valid: {tp.__doc__.strip().splitlines()[0]}") from None
    if tp in (int, float):
        number = _number(value)
        if number is None or (tp is int and isinstance(number, float) and not number.is_integer()):
            raise ConfigError(
                f"{_flag(f)}: cannot read {value!r} from {source} as {tp.__name__} "
                f"(expected {_type_name(tp)})"
            )
        return tp(number)
    choices = f.metadata.get("choices")
    if choices and isinstance(value, bool) and {"on", "off"} <= set(choices):
        # YAML 1.1 reads unquoted on/off/yes/no as booleans: `channels_last: on` means "on".
        value = "on" if value else "off"
    if choices and isinstance(value, bool) and "off" in choices and not value:
        value = "off"  # `amp: off` in YAML
    if choices and value not in choices:
        raise ConfigError(f"{where} is not one of {', '.join(choices)}")
    return str(value)


def _number(value):
    """int or float from a number or its text; None for anything else. YAML's true/false would
    pass int() as 1/0, and int(3.7) would quietly be 3: both are refused by the caller."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    for parse in (int, float):
        try:
            return parse(str(value).strip())
        except ValueError:
            pass
    return None


def _is_optional(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def merge(cfg: TrainConfig, updates: dict, source: str) -> TrainConfig:
    """Apply a nested {section: {field: value}} (or flat {field: value}) dict onto cfg."""
    flat = {}
    for key, val in (updates or {}).items():
        if key in SECTIONS and isinstance(val, dict):
            for k, v in val.items():
                flat[(key, k)] = v
        else:
            flat[(None, key)] = val
    for (section, key), val in flat.items():
        key = key.replace("-", "_")
        target = _find_field(section, key)
        if target is None:
            where = f"{section}.{key}" if section else key
            raise ConfigError(f"unknown setting {where!r} in {source}; see 'camodet train --help'")
        sec_name, f = target
        setattr(getattr(cfg, sec_name), f.name, _coerce(val, f, source))
    return cfg


def _find_field(section: str | None, key: str):
    for sec_name, sec_type in SECTIONS.items():
        if section not in (None, sec_name):
            continue
        for f in dataclasses.fields(sec_type):
            if f.name == key:
                return sec_name, f
    return None


def load_yaml(path: str, flag: str = "--config") -> dict:
    """The mapping a YAML file holds; `flag` is the option that named the file, for the messages."""
    if not os.path.isfile(path):
        raise ConfigError(f"{flag} file {path} does not exist; check the {flag} path")
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{flag} file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{flag} file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def save_yaml(cfg: TrainConfig, path: str) -> None:
    with open(path, "w") as fh:
        yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)


def add_arguments(parser: argparse.ArgumentParser, only: "set[str] | None" = None) -> None:
    """Generate one flag per config field; defaults are suppressed so that only
    flags the user typed override YAML and defaults. `only`: the sections ('model') and
    fields ('data.img_size') a command reads, when it reads part of the config."""
    parser.add_argument("--config", help="YAML file of settings (CLI flags override it)")
    for sec_name, sec_type in SECTIONS.items():
        group = parser.add_argument_group(sec_name)
        for f in dataclasses.fields(sec_type):
            if only is not None and sec_name not in only and f"{sec_name}.{f.name}" not in only:
                continue
            tp = _base_type(f.type)
            kw: dict[str, Any] = dict(
                dest=f"{sec_name}.{f.name}", default=argparse.SUPPRESS, help=f.metadata["help"]
            )
            if tp is bool:
                kw["action"] = argparse.BooleanOptionalAction
            else:
                # Text here, typed and checked by _coerce: flags and YAML share one validation path.
                kw["type"] = str
                if f.metadata.get("nargs"):
                    kw["nargs"] = f.metadata["nargs"]
                    kw["action"] = "extend"
                choices = f.metadata.get("choices")
                kw["metavar"] = (
                    "{" + ",".join(choices) + "}" if choices else f.name.upper() if tp is not list else "PATH"
                )
            group.add_argument(_flag(f), **kw)
    if only is not None:
        return
    # --no-amp is the reference workflow's spelling of --amp off.
    parser.add_argument(
        "--no-amp",
        dest="optim.amp",
        action="store_const",
        const="off",
        default=argparse.SUPPRESS,
        help="disable mixed precision (same as --amp off)",
    )


def from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the YAML file, then the flags the user typed."""
    cfg = TrainConfig()
    if getattr(args, "config", None):
        merge(cfg, load_yaml(args.config), source=args.config)
    nested: dict[str, dict] = {}
    for key, val in vars(args).items():
        if "." in key:
            sec, name = key.split(".", 1)
            nested.setdefault(sec, {})[name] = val
    return merge(cfg, nested, source="the command line")


def validate(cfg: TrainConfig, check_paths: bool = True) -> None:
    """Refuse settings that make no sense together, in one line naming the flag and
    the fix, before anything is loaded; `check_paths` also checks that data paths exist."""
    d, m, o, s, r = cfg.data, cfg.model, cfg.optim, cfg.stages, cfg.run

    def need(ok: bool, msg: str):
        if not ok:
            raise ConfigError(msg)

    for section in (d, m, o, s, r, cfg.safety, cfg.speed):  # configs built in Python skip _coerce
        for f in dataclasses.fields(section):
            choices = f.metadata.get("choices")
            value = getattr(section, f.name)
            need(
                not choices or value in choices,
                f"{_flag(f)}: {value!r} is not one of {', '.join(choices or [])}",
            )
    need(s.epochs > 0, f"--epochs must be positive (got {s.epochs})")
    need(s.stage1_epochs >= 0, f"--stage1-epochs must be >= 0 (got {s.stage1_epochs})")
    need(
        s.stage1_epochs <= s.epochs,
        f"--stage1-epochs ({s.stage1_epochs}) exceeds --epochs ({s.epochs}), which counts both stages; "
        f"raise --epochs or lower --stage1-epochs",
    )
    need(s.unfreeze_warmup_epochs >= 0, "--unfreeze-warmup-epochs must be >= 0")
    need(o.accumulation_steps >= 1, f"--accumulation-steps must be at least 1 (got {o.accumulation_steps})")
    need(o.batch_size >= 1, f"--batch-size must be at least 1 (got {o.batch_size})")
    need(
        o.stage2_batch_size is None or o.stage2_batch_size >= 1,
        f"--stage2-batch-size must be at least 1 (got {o.stage2_batch_size})",
    )
    need(o.lr > 0, f"--lr must be positive (got {o.lr})")
    need(o.stage2_lr is None or o.stage2_lr > 0, f"--stage2-lr must be positive (got {o.stage2_lr})")
    need(o.min_lr >= 0, f"--min-lr must be >= 0 (got {o.min_lr})")
    for name, peak in (("--lr", o.lr), ("--stage2-lr", cfg.stage2_lr)):
        need(
            o.min_lr <= peak,
            f"--min-lr ({o.min_lr:g}) is above {name} ({peak:g}); the schedule "
            f"would rise instead of decay: lower --min-lr",
        )
    need(o.warmup_epochs >= 0, f"--warmup-epochs must be >= 0 (got {o.warmup_epochs})")
    need(o.grad_clip >= 0, f"--grad-clip must be >= 0 (got {o.grad_clip})")
    need(o.weight_decay >= 0, f"--weight-decay must be >= 0 (got {o.weight_decay})")
    need(o.boundary_gain >= 0, f"--boundary-gain must be >= 0 (got {o.boundary_gain})")
    need(
        o.uncertainty_loss_weight >= 0,
        f"--uncertainty-loss-weight must be >= 0 (got {o.uncertainty_loss_weight})",
    )
    need(o.backbone_lr_mult >= 0, f"--backbone-lr-mult must be >= 0 (got {o.backbone_lr_mult})")
    need(0.0 < o.ema_decay < 1.0, f"--ema-decay must be between 0 and 1 (got {o.ema_decay})")
    need(m.num_experts >= 1, f"--num-experts must be at least 1 (got {m.num_experts})")
    need(
        m.num_experts == 1 or m.decoder == "moe",
        f"--num-experts {m.num_experts}: experts are the moe decoder's; --decoder {m.decoder} has none "
        f"(drop --num-experts or use --decoder moe)",
    )
    need(
        1 <= m.top_k <= m.num_experts or (m.num_experts == 1 and m.top_k >= 1),
        f"--top-k ({m.top_k}) must be between 1 and --num-experts ({m.num_experts})",
    )
    need(
        m.decoder_channels >= 8 and m.decoder_channels % 8 == 0,
        f"--decoder-channels must be a positive multiple of 8 (got {m.decoder_channels})",
    )
    need(d.img_size >= 32, f"--img-size must be at least 32 (got {d.img_size})")
    need(0.0 <= d.val_fraction < 1.0, f"--val-fraction must be in [0, 1) (got {d.val_fraction})")
    need(
        d.num_workers == "auto" or d.num_workers >= 0,
        f"--num-workers must be >= 0 or auto (got {d.num_workers})",
    )
    need(r.keep_last >= 0, f"--keep-last must be >= 0 (got {r.keep_last})")
    sf = cfg.safety
    need(sf.max_rollbacks >= 0, f"--max-rollbacks must be >= 0 (got {sf.max_rollbacks})")
    need(
        0.0 < sf.rollback_lr_factor < 1.0,
        f"--rollback-lr-factor must be between 0 and 1 (got {sf.rollback_lr_factor})",
    )
    need(
        sf.max_nonfinite_steps >= 1,
        f"--max-nonfinite-steps must be at least 1 (got {sf.max_nonfinite_steps})",
    )
    need(
        sf.spike_factor == 0 or sf.spike_factor > 1,
        f"--spike-factor must be 0 (off) or above 1 (got {sf.spike_factor})",
    )
    need(sf.stall_timeout >= 0, f"--stall-timeout must be >= 0 seconds (got {sf.stall_timeout})")
    need(r.image_every >= 0, f"--image-every must be >= 0 (got {r.image_every})")
    need(r.log_every >= 1, f"--log-every must be at least 1 (got {r.log_every})")
    for name in r.tracker:
        need(name in ("wandb", "mlflow"), f"--tracker {name!r} is not one of wandb, mlflow")
    if r.time_limit is not None:
        parse_duration(r.time_limit)
    import signal

    need(
        f"SIG{r.preempt_signal.upper().removeprefix('SIG')}" in signal.Signals.__members__,
        f"--preempt-signal {r.preempt_signal!r} is not a signal name; use e.g. USR1, USR2 or TERM",
    )
    need((d.images is None) == (d.masks is None), "--images and --masks must be given together")
    need(
        not (r.resume_from and r.init_from),
        "--resume-from and --init-from exclude each other: resume continues a run, init starts a new one",
    )
    if m.pretrained and m.pretrained_path:
        raise ConfigError("--pretrained and --pretrained-path exclude each other; pick one source of weights")
    if check_paths:
        need(
            bool(d.dataset_path) or d.images is not None,
            "no training data: give --dataset-path DIR (or --images DIR --masks DIR)",
        )
        for p in d.dataset_path + [x for x in (d.images, d.masks) if x]:
            need(os.path.isdir(p), f"dataset path {p} does not exist or is not a folder; check the path")
        # A resume takes every weight from its checkpoint: the backbone's weights file may be gone.
        weights_file = None if r.resume_from else m.pretrained_path
        for flag, p in (
            ("--resume-from", None if r.resume_from == "auto" else r.resume_from),
            ("--init-from", r.init_from),
            ("--pretrained-path", weights_file),
        ):
            need(p is None or os.path.isfile(p), f"{flag} {p}: no such file")
