import pytest
import torch

from camodet.models.device import amp_dtype, memory_format, tune_kernels


@pytest.mark.parametrize(
    "capability, expected",
    [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16), ((7, 5), torch.float16), ((6, 0), torch.float16)],
)
def test_auto_amp_takes_bf16_only_where_tensor_cores_run_it(monkeypatch, capability, expected):
    # a T4 (7.5) or P100 (6.0) reports bf16 as supported through emulation; auto must pick fp16 there
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert amp_dtype("auto", torch.device("cuda", 0)) == expected


def test_explicit_amp_settings_and_the_cpu():
    gpu = torch.device("cuda", 0)
    assert amp_dtype("bf16", gpu) == torch.bfloat16 and amp_dtype("fp16", gpu) == torch.float16
    assert amp_dtype("off", gpu) is None
    assert all(amp_dtype(s, torch.device("cpu")) is None for s in ("auto", "bf16", "fp16", "off"))


def test_channels_last_auto_is_for_cuda_only():
    assert memory_format("auto", torch.device("cuda", 0)) == torch.channels_last
    assert memory_format("auto", torch.device("cpu")) == torch.contiguous_format
    assert memory_format("on", torch.device("cpu")) == torch.channels_last
    assert memory_format("off", torch.device("cuda", 0)) == torch.contiguous_format


def test_cudnn_autotuning_only_for_cuda(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    tune_kernels(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    tune_kernels(torch.device("cuda", 0))
    assert torch.backends.cudnn.benchmark is True
