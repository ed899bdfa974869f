"""Which device, autocast dtype and memory format: one answer for training, inference and measuring."""

import torch


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
