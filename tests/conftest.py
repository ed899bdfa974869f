import os
import sys

import pytest
import torch

from camodet.data.synth import write_dataset

REAL_SAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "real_camo_samples")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small COD10K-layout synthetic dataset shared by the whole session (read-only)."""
    root = str(tmp_path_factory.mktemp("synth") / "COD10K-v3")
    write_dataset(root, train=24, test=6, seed=3, noncam_every=8, size_range=(64, 112))
    return root


@pytest.fixture
def tiny_args(synth_root, tmp_path):
    """CLI flags of a tiny, fast training run."""
    return ["--dataset-path", synth_root, "--checkpoint-dir", str(tmp_path / "run"),
            "--backbone", "edgenext_xx_small", "--num-experts", "3", "--img-size", "64",
            "--batch-size", "4", "--num-workers", "0", "--decoder-channels", "16",
            "--epochs", "2", "--stage1-epochs", "1", "--seed", "1"]


def truncate(path) -> None:
    """Cut an image file to a third: its header survives (the listing passes it), its pixels do not."""
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 3])


def real_samples_dir():
    return REAL_SAMPLES if os.path.isdir(REAL_SAMPLES) else None


PYTHON = sys.executable


@pytest.fixture(scope="session")
def tiny_checkpoint(synth_root, tmp_path_factory):
    """best_model.pth of a one-epoch tiny run with EMA (weights barely trained; fine for plumbing)."""
    from camodet.cli import main
    out = tmp_path_factory.mktemp("tiny_run")
    assert main(["train", "--dataset-path", synth_root, "--checkpoint-dir", str(out), "--backbone",
                 "edgenext_xx_small", "--num-experts", "2", "--img-size", "64", "--batch-size", "8",
                 "--num-workers", "0", "--decoder-channels", "16", "--epochs", "1", "--stage1-epochs", "1",
                 "--use-ema", "--ema-decay", "0.5"]) == 0
    return out / "best_model.pth"
