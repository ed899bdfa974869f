"""Which device, autocast dtype and memory format: one answer for training, inference and measuring."""

import torch

from ..errors import ConfigError
from ..fields import base_type, device_name, get, leaves


def devices_here() -> list[str]:
    """The devices this machine has, as --device names them."""
    names = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names + ["cpu"]


def check_device(name: str) -> None:
    """--device NAME exists on this machine; one line naming the flag and the devices there are
    otherwise (a notebook whose GPU is off, a typo, cuda:3 on a machine with one GPU)."""
    here = devices_here()
    if name in ("auto", "cpu") or name in here or (name == "cuda" and "cuda:0" in here):
        return
    if name.startswith("cuda") and not any(d.startswith("cuda") for d in here):
        why = "this machine has no CUDA GPU (or this torch has no CUDA)"
    else:
        why = "this machine has no such device"
    raise ConfigError(f"--device {name}: {why}; the devices here are {', '.join(here)} (or auto)")


def check_devices(options) -> None:
    """Every --device of a command's options, checked once, before the command does anything."""
    for leaf in leaves(type(options)):
        if base_type(leaf.field.type) is device_name:
            check_device(get(options, leaf.path))


def resolve_device(name: str) -> torch.device:
    """'auto' -> the GPU when there is one, else the CPU; anything else as torch reads it."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for --amp auto|bf16|fp16|off; None runs fp32 (always on the CPU)."""
    if device.type != "cuda" or setting == "off":
        return None
    if setting == "auto":
        # bf16 only where tensor cores run it (Ampere, compute capability 8, and newer):
        # torch.cuda.is_bf16_supported() also says yes on a T4, P100 or V100, where bf16 is
        # emulated and far slower than fp16 with a grad scaler.
        return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def autocast_name(dtype: torch.dtype | None) -> str:
    """'bf16', 'fp16' or 'fp32': what a run computes in, as checkpoints record it."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def memory_format(setting: str, device: torch.device) -> torch.memory_format:
    """--channels-last auto|on|off; auto: channels_last on CUDA, where convolutions run faster in it."""
    on = setting == "on" or (setting == "auto" and device.type == "cuda")
    return torch.channels_last if on else torch.contiguous_format


def tune_kernels(device: torch.device) -> None:
    """cuDNN times the convolution algorithms once per input shape and keeps the fastest. A
    training run feeds one fixed size, so it pays from the first epoch. GPU runs are not
    bit-reproducible anyway (atomic adds in backward); the CPU, where exact resume is
    tested, is untouched."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
