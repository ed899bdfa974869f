"""Typed run configuration: the single source of truth for CLI flags, YAML files
and the ``config.yaml`` written into every run folder.

No torch here: validation that needs a backbone lives in ``camodet.models``.
"""

import dataclasses
import os
import signal
import typing
from dataclasses import dataclass, field

import yaml

from .errors import ConfigError
from .fields import (
    add_options,
    check_fields,
    device_name,
    merge_into,
    opt,
    options_from_args,
    parse_duration,
    workers,
)


def signal_name(value) -> str:
    """a signal name such as USR1, USR2 or TERM"""
    name = str(value).upper().removeprefix("SIG")
    if f"SIG{name}" not in signal.Signals.__members__:
        raise ValueError(value)
    return str(value)


def duration(value) -> str:
    """a positive duration such as 8h45m, 90m or 3600s"""
    parse_duration(value)  # ConfigError is a ValueError: said with the field's flag
    return str(value)


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
    img_size: int = opt(384, "training/inference side length in pixels", min=32)
    augment: str = opt(
        "full",
        "training augmentation: full (random crop of 0.6-1 of the area, rotation up to 15 degrees, "
        "flip, colour jitter) or flip (the whole image, flipped at random: nothing else)",
        choices=["full", "flip"],
    )
    val_fraction: float = opt(
        0.1, "fraction of training images held out for validation (seeded)", min=0, below=1
    )
    include_noncam: bool = opt(False, "COD10K: also use NonCAM images (the field uses CAM only)")
    skip_bad_files: bool = opt(False, "skip unreadable or unmatched files instead of stopping")
    num_workers: workers = opt(
        "auto",
        "data-loader worker processes, or auto: on a GPU the cores "
        "less one (up to 16); on the CPU none where the compute "
        "threads need every core (see camodet/engine/loaders.py)",
        min=0,
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
        1, "number of experts in each mixture-of-experts block (1: no routing; moe decoder)", min=1
    )
    top_k: int = opt(2, "experts chosen per image with --gating topk (ignored with one expert)", min=1)
    gating: str = opt("topk", "router gating", choices=["topk", "dense"])
    decoder_channels: int = opt(64, "channels of the decoder", multiple_of=8, min=8)
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

    batch_size: int = opt(8, "stage-1 micro-batch size per process", min=1)
    stage2_batch_size: int | None = opt(None, "stage-2 micro-batch size (default: --batch-size)", min=1)
    accumulation_steps: int = opt(1, "micro-batches per optimizer step", min=1)
    lr: float = opt(4e-4, "stage-1 peak learning rate", above=0)
    stage2_lr: float | None = opt(None, "stage-2 peak learning rate (default: --lr)", above=0)
    min_lr: float = opt(1e-5, "learning rate at the last step of each stage", min=0)
    scheduler: str = opt(
        "cosine", "learning-rate schedule after warmup", choices=["cosine", "constant", "step"]
    )
    warmup_epochs: float = opt(0.0, "linear warmup at the start of each stage, in epochs", min=0)
    weight_decay: float = opt(0.01, "AdamW weight decay (never on norms and biases)", min=0)
    grad_clip: float = opt(1.0, "clip the global gradient norm to this (0 = off)", min=0)
    backbone_lr_mult: float = opt(0.1, "backbone LR as a multiple of the stage LR", min=0)
    moe_loss_weight: float = opt(0.01, "weight of the mixture-of-experts load-balancing loss", min=0)
    boundary_gain: float = opt(
        5.0,
        "structure loss: a pixel at the mask's boundary weighs up to 1 + this (0: plain BCE + IoU)",
        min=0,
    )
    uncertainty_loss_weight: float = opt(
        0.0,
        "ZoomNet's uncertainty-aware loss, mean 1 - (2p - 1)^2, which pushes probabilities away from "
        "0.5: its weight at the last epoch, reached by a cosine ramp from 0 at the first (0: off)",
        min=0,
    )
    use_ema: bool = opt(False, "keep an exponential moving average of the weights")
    ema_decay: float = opt(0.999, "EMA decay per optimizer step", above=0, below=1)
    amp: str = opt(
        "auto",
        "mixed precision: auto = bf16 on Ampere and newer GPUs, fp16 with a grad scaler "
        "on older ones (T4, P100, V100), off on the CPU",
        choices=["auto", "bf16", "fp16", "off"],
        aliases={"--no-amp": "off"},  # the reference workflow's spelling of --amp off
    )


@dataclass
class StageConfig:
    """Stage 1 (frozen backbone) and stage 2 (progressive unfreezing) lengths."""

    epochs: int = opt(120, "total epochs over both stages", above=0)
    stage1_epochs: int = opt(30, "epochs with the backbone frozen (stage 1)", min=0)
    skip_stage1: bool = opt(False, "start in stage 2")
    progressive_unfreeze: bool = opt(False, "stage 2 unfreezes backbone stages deepest-first")
    unfreeze_warmup_epochs: float = opt(1.0, "LR warmup of a newly unfrozen backbone stage, in epochs", min=0)


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
    device: device_name = opt("auto", "auto, cpu, cuda, cuda:N or mps")
    keep_last: int = opt(0, "also keep epoch_N.pth for the last K epochs (0 = only last.pth and best)", min=0)
    log_every: int = opt(20, "optimizer steps between progress-bar and TensorBoard step updates", min=1)
    tensorboard: bool = opt(True, "write TensorBoard logs to RUN/tensorboard (needs the tensorboard package)")
    image_every: int = opt(
        5, "epochs between TensorBoard panels of validation predictions (0 = never)", min=0
    )
    tracker: list[str] = opt(
        [],
        "experiment tracker(s) to log to, wandb and/or mlflow (repeat the flag or list both): config, "
        "epoch records, events, the final export and report; offline by default (W&B offline mode, "
        "MLflow to RUN/mlflow.db)",
        nargs="+",
        choices=["wandb", "mlflow"],
    )
    tracking_uri: str | None = opt(
        None, "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///RUN/mlflow.db)"
    )
    preempt_signal: signal_name = opt(
        "USR1",
        "signal a scheduler sends ahead of preemption (SLURM: --signal=USR1@120): "
        "like SIGTERM the run saves its position and stops, with exit code 75",
    )
    requeue_on_preempt: bool = opt(
        False,
        "under SLURM, requeue the job (scontrol requeue) after saving on the "
        "preemption signal or SIGTERM; with --resume-from auto it continues",
    )
    time_limit: typing.Optional[duration] = opt(  # noqa: UP045 (a parser function has no | None)
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

    max_rollbacks: int = opt(3, "rollbacks to the last good state before the run stops as diverged", min=0)
    rollback_lr_factor: float = opt(0.5, "LR multiplier applied at each rollback", above=0, below=1)
    max_nonfinite_steps: int = opt(
        3, "non-finite steps within 100 optimizer steps that trigger a rollback", min=1
    )
    spike_factor: float = opt(
        10.0, "a step loss this many times the running median triggers a rollback (0 disables)"
    )
    stall_timeout: float = opt(
        900.0,
        "seconds without a finished optimizer step before the watchdog dumps "
        "stacks and stops the run (0 disables)",
        min=0,
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


def merge(cfg: TrainConfig, updates: dict, source: str) -> TrainConfig:
    """Apply a nested {section: {field: value}} (or flat {field: value}) dict onto cfg."""
    return merge_into(cfg, updates, source, "camodet train")


def save_yaml(cfg: TrainConfig, path: str) -> None:
    with open(path, "w") as fh:
        yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)


def add_arguments(parser) -> None:
    """train's flags, one per TrainConfig field (the generator every command's parser uses)."""
    add_options(parser, TrainConfig)


def from_args(args) -> TrainConfig:
    """Defaults, then the YAML file, then the flags the user typed."""
    return options_from_args(TrainConfig, args, "camodet train")


def validate(cfg: TrainConfig, check_paths: bool = True) -> None:
    """Refuse settings that make no sense together, in one line naming the flag and the fix,
    before anything is loaded (each setting's own type, choices and range are the gate's:
    camodet/fields.py); `check_paths` also checks that data paths exist."""
    d, m, o, s, r = cfg.data, cfg.model, cfg.optim, cfg.stages, cfg.run

    def need(ok: bool, msg: str):
        if not ok:
            raise ConfigError(msg)

    check_fields(cfg)  # a config built in Python has not passed the gate's choices and ranges
    need(
        s.stage1_epochs <= s.epochs,
        f"--stage1-epochs ({s.stage1_epochs}) exceeds --epochs ({s.epochs}), which counts both stages; "
        f"raise --epochs or lower --stage1-epochs",
    )
    for name, peak in (("--lr", o.lr), ("--stage2-lr", cfg.stage2_lr)):
        need(
            o.min_lr <= peak,
            f"--min-lr ({o.min_lr:g}) is above {name} ({peak:g}); the schedule "
            f"would rise instead of decay: lower --min-lr",
        )
    need(
        m.num_experts == 1 or m.decoder == "moe",
        f"--num-experts {m.num_experts}: experts are the moe decoder's; --decoder {m.decoder} has none "
        f"(drop --num-experts or use --decoder moe)",
    )
    need(
        m.top_k <= m.num_experts or m.num_experts == 1,
        f"--top-k ({m.top_k}) must be between 1 and --num-experts ({m.num_experts})",
    )
    # one setting, but a range of two pieces: off, or a factor above 1
    need(
        cfg.safety.spike_factor == 0 or cfg.safety.spike_factor > 1,
        f"--spike-factor must be 0 (off) or above 1 (got {cfg.safety.spike_factor})",
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
