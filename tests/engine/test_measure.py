import torch

from camodet.engine import measure


def test_card_peak_adds_what_the_process_holds_outside_the_allocator(monkeypatch):
    gib = 2**30
    # 80 GiB card, 10.5 GiB in use by this process, 9 GiB of it the allocator's: 1.5 GiB context
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (69.5 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d: 9 * gib)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d: 11 * gib)
    assert measure.cuda_card_peak_mb(torch.device("cuda", 0)) == 12.5 * 1024


def test_a_measurement_that_outruns_its_timeout_is_a_failed_one():
    spec = {
        "model_cfg": {"backbone": "edgenext_xx_small", "num_experts": 2},
        "img_size": 64,
        "batch": 2,
        "stage": 2,
        "device": "cpu",
    }
    r = measure.measure_in_subprocess(timeout=0.5, **spec)
    assert r == {"stage": 2, "batch": 2, "error": "timed out after 0.5 s"}
