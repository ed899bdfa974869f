import os
import sys

import pytest
import torch

from camodet.data.synth import write_dataset

REAL_SAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "real_camo_samples")
# Under pytest-xdist (`make test` runs `-n 2`) each worker takes its share of the cores: two workers
# of two threads each on a 2-core machine would spin against each other.
# The processes that tests start get the same share, so that a run in a subprocess and one in the test
# compute with as many threads.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
torch.set_num_threads(THREADS)
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small COD10K-layout synthetic dataset shared by the whole session (read-only)."""
    root = str(tmp_path_factory.mktemp("synth") / "COD10K-v3")
    write_dataset(root, train=24, test=6, seed=3, noncam_every=8, size_range=(64, 112))
    return root


@pytest.fixture
def tiny_args(synth_root, tmp_path):
    """CLI flags of a tiny, fast training run."""
    return tiny_flags(synth_root, tmp_path / "run")


def tiny_flags(synth_root, run_dir) -> list[str]:
    """tiny_args for a run in `run_dir` (for fixtures that outlive one test)."""
    return [
        "--dataset-path",
        synth_root,
        "--checkpoint-dir",
        str(run_dir),
        "--backbone",
        "edgenext_xx_small",
        "--num-experts",
        "3",
        "--img-size",
        "64",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--decoder-channels",
        "16",
        "--epochs",
        "2",
        "--stage1-epochs",
        "1",
        "--seed",
        "1",
    ]


def tiny_config(synth_root, run_dir, **settings):
    """tiny_flags as a validated TrainConfig, for tests that build the Trainer themselves;
    `settings` by field name on top."""
    from camodet.config import TrainConfig

    flags = tiny_flags(synth_root, run_dir)
    named = {flag[2:].replace("-", "_"): value for flag, value in zip(flags[::2], flags[1::2])}
    return TrainConfig.from_dict({**named, **settings}).validate()


def truncate(path) -> None:
    """Cut an image file to a third: its header survives (the listing passes it), its pixels do not."""
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])


def files_under(root) -> dict[str, bytes]:
    """{path relative to root: bytes} of every file below root."""
    return {
        os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
        for d, _, fs in os.walk(root)
        for f in fs
    }


def real_samples_dir():
    return REAL_SAMPLES if os.path.isdir(REAL_SAMPLES) else None


PYTHON = sys.executable


@pytest.fixture(scope="session")
def tiny_checkpoint(synth_root, tmp_path_factory):
    """best_model.pth of a one-epoch tiny run with EMA (weights barely trained; fine for plumbing)."""
    from camodet.cli import main

    out = tmp_path_factory.mktemp("tiny_run")
    assert (
        main(
            [
                "train",
                "--dataset-path",
                synth_root,
                "--checkpoint-dir",
                str(out),
                "--backbone",
                "edgenext_xx_small",
                "--num-experts",
                "2",
                "--img-size",
                "64",
                "--batch-size",
                "8",
                "--num-workers",
                "0",
                "--decoder-channels",
                "16",
                "--epochs",
                "1",
                "--stage1-epochs",
                "1",
                "--use-ema",
                "--ema-decay",
                "0.5",
            ]
        )
        == 0
    )
    return out / "best_model.pth"


@pytest.fixture(scope="session")
def onnx_export(tiny_checkpoint, tmp_path_factory):
    """tiny_checkpoint exported with both ONNX graphs (read-only), shared by the session: the
    trace takes a minute or two on a 2-core CPU, so the tests that read a graph share this export."""
    pytest.importorskip("onnxruntime", reason="ONNX export needs pip install 'camodet[export]'")
    from camodet.cli import main

    out = tmp_path_factory.mktemp("onnx") / "export"
    assert main(["export", str(tiny_checkpoint), str(out), "--onnx", "--fp16"]) == 0
    return out


def _write(img_dir, gt_dir, stem, rng, noncam=False, gt_ext=".png"):
    """One synthetic pair (64-96 px, not square) named and placed as the real dataset has it."""
    import numpy as np
    from PIL import Image

    from camodet.data.synth import make_sample

    h, w = int(rng.integers(64, 97)), int(rng.integers(64, 97))
    image, mask = make_sample(rng, h, w, camouflaged=not noncam)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(gt_dir, exist_ok=True)
    Image.fromarray(image).save(os.path.join(img_dir, stem + ".jpg"), quality=92)
    Image.fromarray(mask).save(os.path.join(gt_dir, stem + gt_ext))
    return np.asarray(mask)


# Per benchmark: (train CAM, train NonCAM, test CAM, test NonCAM) in the fixture trees below.
BENCHMARK_COUNTS = {
    "COD10K": (6, 2, 3, 2),
    "CAMO": (4, 0, 2, 0),
    "NC4K": (0, 0, 3, 0),
    "CHAMELEON": (0, 0, 2, 0),
}


def build_benchmarks(base) -> dict:
    """COD10K-v3, CAMO, NC4K and CHAMELEON trees shaped as the downloads are (folder names,
    file names, CAMO's single GT/ folder for both splits, COD10K's NonCAM images with empty
    masks and its extra GT_Edge/GT_Instance folders), small synthetic pictures inside.
    Returns {name: root}."""
    import numpy as np

    rng = np.random.default_rng(0)
    base = str(base)
    cod = os.path.join(base, "COD10K-v3")
    for split, (cam, noncam) in (
        ("Train", BENCHMARK_COUNTS["COD10K"][:2]),
        ("Test", BENCHMARK_COUNTS["COD10K"][2:]),
    ):
        for i in range(cam + noncam):
            kind = "NonCAM-5-Background-1-Sky" if i >= cam else "CAM-1-Aquatic-1-BatFish"
            stem = f"COD10K-{kind}-{i + 1}"
            mask = _write(
                os.path.join(cod, split, "Image"), os.path.join(cod, split, "GT_Object"), stem, rng, i >= cam
            )
            for extra in ("GT_Edge", "GT_Instance"):  # present in the download, not used
                os.makedirs(os.path.join(cod, split, extra), exist_ok=True)
                from PIL import Image

                Image.fromarray(mask).save(os.path.join(cod, split, extra, stem + ".png"))
    camo = os.path.join(base, "CAMO-V.1.0-CVIU2019")
    n_train, n_test = BENCHMARK_COUNTS["CAMO"][0], BENCHMARK_COUNTS["CAMO"][2]
    for i in range(n_train + n_test):  # numbered across both splits, every mask in one GT/
        split = "Train" if i < n_train else "Test"
        _write(os.path.join(camo, "Images", split), os.path.join(camo, "GT"), f"camourflage_{i + 1:05d}", rng)
    nc4k = os.path.join(base, "NC4K")
    for i in range(BENCHMARK_COUNTS["NC4K"][2]):
        _write(os.path.join(nc4k, "Imgs"), os.path.join(nc4k, "GT"), str(i + 1), rng)
    os.makedirs(os.path.join(nc4k, "Instance"), exist_ok=True)
    cham = os.path.join(base, "CHAMELEON")
    for i in range(BENCHMARK_COUNTS["CHAMELEON"][2]):
        _write(os.path.join(cham, "Imgs"), os.path.join(cham, "GT"), f"animal-{i + 1}", rng)
    return {"COD10K": cod, "CAMO": camo, "NC4K": nc4k, "CHAMELEON": cham}


@pytest.fixture(scope="session")
def benchmarks(tmp_path_factory):
    """The four benchmark trees (read-only), shared by the session."""
    return build_benchmarks(tmp_path_factory.mktemp("benchmarks"))


def poison_weights_at(monkeypatch, call: int) -> None:
    """Fill a trainable decoder weight with NaN just before the trainer's `call`-th set_lrs
    (one per optimizer step): the guard then sees non-finite weights and must roll back."""
    import math

    import camodet.engine.trainer as trainer

    models, real_build = [], trainer.build_model
    monkeypatch.setattr(trainer, "build_model", lambda cfg: models.append(real_build(cfg)) or models[-1])
    real_set_lrs, calls = trainer.set_lrs, [0]

    def poison_then_set_lrs(*args):
        calls[0] += 1
        if calls[0] == call:
            with torch.no_grad():
                next(p for p in models[0].decoder.parameters() if p.requires_grad).fill_(math.nan)
        return real_set_lrs(*args)

    monkeypatch.setattr(trainer, "set_lrs", poison_then_set_lrs)
