"""Checkpoint files: atomic writes, safe loads (weights_only), architecture checks."""

import os
import pickle
import tempfile

import torch

FORMAT = "camodet-checkpoint-v1"
ARCH_KEYS = ("backbone", "num_experts", "top_k", "gating", "decoder_channels", "deep_supervision")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit; the message says what to do.
    `kind`: missing, unsafe (needs pickled code), corrupt, foreign (not ours), arch, write."""

    def __init__(self, message: str, kind: str = "other"):
        super().__init__(message)
        self.kind = kind


def atomic_save(obj: dict, path: str) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`: a crash
    at any point leaves either the old file or the new one, never a torn one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise CheckpointError(
                f"could not write {path} ({e.strerror or e}); the previous file "
                f"is untouched; free disk space or fix permissions",
                "write",
            ) from None
        raise
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename itself is atomic


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
            f"use another checkpoint (last.pth, best_model.pth or an epoch_N.pth)",
            "corrupt",
        ) from None
    if not isinstance(ckpt, dict) or "model_state_dict" not in ckpt:
        raise CheckpointError(
            f"{path}: not a camodet checkpoint (no model_state_dict); give a last.pth or "
            f"best_model.pth written by camodet train (ImageNet backbone weights go to "
            f"--pretrained-path)",
            "foreign",
        )
    return ckpt


def arch_of(model_cfg: dict) -> dict:
    return {k: model_cfg.get(k) for k in ARCH_KEYS}


def check_arch(ckpt: dict, model_cfg: dict, path: str) -> None:
    saved = ckpt.get("config", {}).get("model", {})
    want = arch_of(model_cfg)
    diff = [f"{k}={saved.get(k)!r} (this run: {want[k]!r})" for k in ARCH_KEYS if saved.get(k) != want[k]]
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
