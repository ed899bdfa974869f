"""The checkpoint format, written and read in one place: atomic writes, safe loads
(weights_only), architecture checks, the choice between raw and EMA weights, and the
training state objects saved under the file's keys and restored from them, each with its
own state_dict/load_state_dict (in the manner of torchtitan's CheckpointManager)."""

import errno
import math
import os
import pickle
import tempfile
from dataclasses import dataclass, field

import torch

from ..options import WEIGHT_CHOICES
from .errors import CheckpointError
from .folder import BEST, LAST, NUMBERED

FORMAT = "camodet-checkpoint-v1"
ARCH_KEYS = ("backbone", "decoder", "num_experts", "top_k", "gating", "decoder_channels", "deep_supervision")
# What a checkpoint written before a setting existed was trained with.
ARCH_DEFAULTS = {"decoder": "moe"}
MOE_KEYS = ("num_experts", "top_k", "gating")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj: dict, path: str) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`: a crash
    at any point leaves either the old file or the new one, never a torn one. A write that
    fails (a full disk, no permission) removes its temp file and raises a CheckpointError that
    names the file and the fix."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path), dir=folder)
        # mkstemp makes the file private (0600) and os.replace keeps that: give it the mode any
        # other file written here gets, so a team's shared run folder stays readable.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise CheckpointError(write_failure(path, e), "write") from None
        raise
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename itself is atomic


def write_failure(path: str, e: OSError) -> str:
    """Why `path` could not be written, and the fix, in one line."""
    folder = os.path.dirname(os.path.abspath(path))
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"the disk (or quota) holding {folder} is full: free space there"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"{folder} is not writable: fix its permissions or write elsewhere"
    else:
        fix = "free disk space or fix permissions"
    return f"could not write {path} ({e.strerror or e}); the previous file is untouched; {fix}"


def load_checkpoint(path: str, mmap: bool = False) -> dict:
    """mmap=True maps the tensors instead of reading them: cheap when only the small entries
    (config, epoch, normalization) are wanted."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file", "missing")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused, it needs arbitrary Python objects to load ({str(e).splitlines()[0][:120]}); "
            f"loading it could run untrusted code. If you trust it, convert it once with "
            f"torch.load(..., weights_only=False) and re-save a plain dict of tensors",
            "unsafe",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: unreadable or truncated checkpoint ({str(e).splitlines()[0][:120]}); "
            f"use another checkpoint ({LAST}, {BEST} or an {NUMBERED.format('N')})",
            "corrupt",
        ) from None
    if not isinstance(ckpt, dict) or MODEL not in ckpt:
        raise CheckpointError(
            f"{path}: not a camodet checkpoint (no model_state_dict); give a {LAST} or "
            f"{BEST} written by camodet train (ImageNet backbone weights go to "
            f"--pretrained-path)",
            "foreign",
        )
    return ckpt


def arch_of(model_cfg: dict) -> dict:
    """The settings that decide the shapes of a model's tensors (the experts' only for the moe
    decoder, the one that has them)."""
    arch = {k: model_cfg.get(k, ARCH_DEFAULTS.get(k)) for k in ARCH_KEYS}
    if arch["decoder"] != "moe":
        arch = {k: v for k, v in arch.items() if k not in MOE_KEYS}
    return arch


def check_arch(ckpt: dict, model_cfg: dict, path: str) -> None:
    saved = arch_of(ckpt.get("config", {}).get("model", {}))
    want = arch_of(model_cfg)
    diff = [
        f"{k}={saved.get(k)!r} (this run: {want.get(k)!r})" for k in ARCH_KEYS if saved.get(k) != want.get(k)
    ]
    if diff:
        raise CheckpointError(
            f"{path} is another architecture: {', '.join(diff)}; match those settings, "
            f"or use --init-from {path} to take only the tensors that fit",
            "arch",
        )


def load_matching(model: torch.nn.Module, state: dict) -> tuple[int, int]:
    """Copy tensors whose name and shape match; (loaded, total in model)."""
    own = model.state_dict()
    fit = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fit, strict=False)
    return len(fit), len(own)


def _float_tensors(obj, prefix: str = ""):
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield prefix, obj
        return
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        yield from _float_tensors(v, f"{prefix}.{k}" if prefix else str(k))


def nonfinite_tensors(obj, prefix: str = "") -> list[str]:
    """Names of floating-point tensors holding NaN or Inf, anywhere in a nested checkpoint.
    One device-to-host read per device, not one per tensor."""
    by_device: dict = {}
    for name, t in _float_tensors(obj, prefix):
        by_device.setdefault(t.device, []).append((name, t))
    bad = []
    for pairs in by_device.values():
        finite = torch.stack([torch.isfinite(t).all() for _, t in pairs]).tolist()
        bad += [name for (name, _), ok in zip(pairs, finite) if not ok]
    return bad


# The file's keys. A checkpoint is a flat dict: the weights that were validated under MODEL
# (the EMA weights in every checkpoint of an EMA run, the raw ones then beside them under RAW;
# earlier versions did so only in best_model.pth: their last.pth holds the raw ones under MODEL).
MODEL, RAW, EMA = "model_state_dict", "raw_model_state_dict", "ema_state_dict"
OPTIMIZER, SCALER, RNG, GUARD, POSITION = (
    "optimizer_state_dict",
    "scaler_state_dict",
    "rng_state",
    "guard",
    "position",
)


def model_weights(ckpt: dict, which: str = "auto", path: str = "the checkpoint") -> dict:
    """The one place that picks a checkpoint's weights. auto: what its run validated with (the
    EMA weights of an EMA run, whichever file of the run it is); raw: the trained weights without
    EMA (what a resume continues from); ema: the EMA weights."""
    if weights_choice(ckpt, which, path) == "ema":
        return ckpt[EMA]
    return ckpt.get(RAW, ckpt[MODEL])


def weights_choice(ckpt: dict, which: str = "auto", path: str = "the checkpoint") -> str:
    """'ema' or 'raw': the set of weights `which` picks in this checkpoint (auto resolved), which is
    what an evaluation or an export records as used."""
    if which == "auto":
        # EMA first: an older last.pth of an EMA run holds the raw weights under MODEL.
        return "ema" if EMA in ckpt else "raw"
    if which == "raw":
        return "raw"
    if which == "ema":
        if EMA not in ckpt:
            raise CheckpointError(
                f"{path} has no EMA weights (trained without --use-ema); use --weights raw", "foreign"
            )
        return "ema"
    raise ValueError(f"weights must be one of {', '.join(WEIGHT_CHOICES)} (got {which!r})")


def steps_taken(ckpt: dict) -> int:
    """Optimizer steps a mid-epoch checkpoint took inside its interrupted epoch: one per window of
    `accumulation_steps` micro-batches (the epoch's last window may be short), as it was saved."""
    accum = int(ckpt.get("config", {}).get("optim", {}).get("accumulation_steps", 1))
    return math.ceil(int(ckpt[POSITION]["micro_step"]) / accum)


def to_cpu(obj):
    """A host copy of a nest of tensors (dicts, lists and tuples kept)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


@dataclass
class RunState:
    """The run's counters, saved at the top level of every checkpoint."""

    epoch: int = 0  # last completed epoch
    global_step: int = 0
    best_iou: float = -math.inf
    best_epoch: int = 0
    metrics: dict | None = None
    lr_scale: float = 1.0  # product of the rollback back-offs so far
    rollbacks: int = 0
    interrupted: str = ""  # the signal's name (or "time limit") when the run stopped early (not saved)
    # What decides the computation beyond the config, saved so that an exact resume of a
    # warm restart (or of a multi-process run) computes what the uninterrupted run did.
    schedule_start: tuple | None = None  # first epoch of each stage's LR schedule (a warm restart moves it)
    world_size: int = 1
    autocast: str = "fp32"  # what --amp resolved to on the device: bf16, fp16 (grad scaler) or fp32
    rollback_files: list = field(
        default_factory=list
    )  # per rollback, the files of its bad windows (not saved)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_iou": self.best_iou,
            "best_epoch": self.best_epoch,
            "lr_scale": self.lr_scale,
            "rollbacks": self.rollbacks,
            "schedule_start": list(self.schedule_start or ()),
            "world_size": self.world_size,
            "autocast": self.autocast,
            "metrics": self.metrics or {},
        }

    def load_state_dict(self, ckpt: dict, exact: bool = True, same_run: bool = True) -> None:
        """Position always; the best so far only when continuing the same run folder (a run
        started from another run's file has no best yet); the rollback back-off and the
        schedule's start only for an exact continuation (a warm restart re-plans)."""
        self.epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt.get("global_step", 0))
        if not exact and POSITION in ckpt:
            # A warm restart trains the interrupted epoch again from its beginning: its steps so far
            # are not part of the new history (they would be counted twice).
            self.global_step -= steps_taken(ckpt)
        if same_run:
            self.best_iou = float(ckpt.get("best_iou", -math.inf))
            self.best_epoch = int(ckpt.get("best_epoch", 0))
        if exact:
            self.lr_scale = float(ckpt.get("lr_scale", 1.0))
            self.rollbacks = int(ckpt.get("rollbacks", 0))
            saved = ckpt.get("schedule_start")  # absent before camodet 0.1.1: the plan's own
            self.schedule_start = tuple(saved) if saved else None


class RngState:
    """The generators a resumed run must continue: torch's, and CUDA's where there is a GPU."""

    @staticmethod
    def state_dict() -> dict:
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    @staticmethod
    def load_state_dict(state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if torch.cuda.is_available() and state["cuda"]:
            # One state per GPU the saving process saw; a machine with fewer GPUs takes its own.
            torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


@dataclass
class TrainingCheckpoint:
    """Everything a training checkpoint holds, by the objects that hold it. `state_dict` writes
    them under the file's keys and `load_state_dict` gives each back what it wrote. `model` is
    the bare model (not a DDP wrapper); `normalization` its input statistics; `config` the run's
    settings as a dict; `ema` a timm ModelEma (or None); `guard` has state_dict/load_state_dict."""

    model: torch.nn.Module
    ema: object
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    state: RunState
    guard: object
    config: dict

    def state_dict(self, stage: int, position: dict | None = None) -> dict:
        """The same layout for every file of the run (last, best, numbered), so each one's MODEL
        is what validation used: the EMA's weights when there is an EMA. `position`: a mid-epoch
        checkpoint's place inside the epoch (its EpochProgress)."""
        raw = to_cpu(self.model.state_dict())
        ckpt = {
            "format": FORMAT,
            MODEL: raw,
            OPTIMIZER: self.optimizer.state_dict(),
            SCALER: self.scaler.state_dict(),
            RNG: RngState.state_dict(),
            **self.state.state_dict(),
            "stage": stage,
            "config": self.config,
            "weights": "raw",
            "normalization": self.model.normalization.to_dict(),  # the input statistics the weights expect
            GUARD: self.guard.state_dict(),
        }
        if position is not None:
            ckpt[POSITION] = position
        if self.ema is not None:
            ckpt[EMA] = to_cpu(self.ema.module.state_dict())
            # One dict under two keys: torch.save stores its tensors once.
            ckpt[MODEL], ckpt[RAW] = ckpt[EMA], raw
            ckpt["weights"] = "ema"
        return ckpt

    def load_state_dict(self, ckpt: dict, exact: bool, same_run: bool) -> dict | None:
        """Weights, EMA and counters always; for an exact continuation also the optimizer,
        the grad scaler, the random generators and the guard. Returns the position inside an
        epoch to continue from (None: at an epoch's end, or not exact)."""
        self.model.load_state_dict(model_weights(ckpt, "raw"))
        if self.ema is not None and EMA in ckpt:
            self.ema.module.load_state_dict(ckpt[EMA])
        self.state.load_state_dict(ckpt, exact, same_run)
        if not exact:
            return None
        self.optimizer.load_state_dict(ckpt[OPTIMIZER])
        self.scaler.load_state_dict(ckpt[SCALER])
        RngState.load_state_dict(ckpt[RNG])
        self.guard.load_state_dict(ckpt.get(GUARD, {}))
        return ckpt.get(POSITION)
