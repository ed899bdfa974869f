import json
import os
import subprocess
import sys

import yaml

from camodet.cli import main
from camodet.serving.fetch import model_name

from .conftest import truncate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_entry_points_agree():
    for cmd in (
        [sys.executable, "-m", "camodet", "--help"],
        [sys.executable, os.path.join(ROOT, "train_ultimate.py"), "--help"],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0 and "synth" in proc.stdout and "train" in proc.stdout


def test_method_name_of_runs_exports_and_hub_ids(tmp_path):
    assert model_name("user/camo-model") == "camo-model"  # a Hub id names the model, not its owner
    (tmp_path / "run").mkdir()
    assert model_name(str(tmp_path / "run" / "best_model.pth")) == "run"
    assert model_name(str(tmp_path / "run")) == "run"


def test_synth_and_data_check(tmp_path, capsys):
    out = tmp_path / "ds"
    assert (
        main(
            [
                "synth",
                str(out),
                "--train",
                "5",
                "--test",
                "2",
                "--seed",
                "1",
                "--noncam-every",
                "5",
                "--min-size",
                "48",
                "--max-size",
                "64",
            ]
        )
        == 0
    )
    assert main(["data", "check", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    train = [s for s in report["splits"] if s["split"] == "train"][0]
    assert (train["pairs"], train["cam"], train["noncam"], train["used_by_default"]) == (5, 4, 1, 4)
    assert 48 <= train["width"][0] <= train["width"][2] <= 64 and report["problems"] == []
    os.remove(out / "Train" / "GT_Object" / sorted(os.listdir(out / "Train" / "GT_Object"))[0])
    assert main(["data", "check", str(out)]) == 1
    assert "image without a mask" in capsys.readouterr().out


def test_model_summary(capsys):
    assert (
        main(
            ["model", "summary", "--backbone", "edgenext_xx_small", "--num-experts", "3", "--img-size", "64"]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "experts" in text and "GFLOPs" in text


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--dataset-path", str(tmp_path), "--epochs", "5", "--stage1-epochs", "9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("camodet: error: --stage1-epochs (9) exceeds --epochs (5)") and "\n" not in err
    assert main(["train", "--dataset-path", str(tmp_path), "--backbone", "edgenext_bse"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["train", "--dataset-path", str(tmp_path), "--backbone", "edgenext_xx_small"]) == 2
    assert "no known dataset layout" in capsys.readouterr().err


def _truncate_first(folder):
    path = folder / sorted(os.listdir(folder))[0]
    truncate(path)
    return path


def test_unreadable_image_in_a_worker_is_one_line(synth_root, tiny_args, tmp_path, capsys):
    import shutil

    root = tmp_path / "COD10K-v3"
    shutil.copytree(synth_root, root)
    bad_train, bad_test = _truncate_first(root / "Train" / "Image"), _truncate_first(root / "Test" / "Image")
    args = ["train", *tiny_args, "--epochs", "1", "--num-workers", "2", "--val-fraction", "0.5"]
    args[args.index("--dataset-path") + 1] = str(root)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"camodet: error: {bad_train}: unreadable image") and "\n" not in err
    assert err.endswith("replace it or use --skip-bad-files")
    assert main(args + ["--skip-bad-files", "--overwrite"]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "run" / "best_model.pth"),
                "--dataset-path",
                str(root),
                "--num-workers",
                "2",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"camodet: error: {bad_test}: unreadable image") and "\n" not in err
    assert err.endswith("the protocol scores every test image")


def test_val_fraction_zero_trains_without_validation(tiny_args, tmp_path, capsys):
    """Defined behaviour: every image trains, last.pth each epoch, no best_model.pth, and the
    messages say so (not 'nothing to train' after training)."""
    import torch

    recipe = ["--augment", "flip", "--boundary-gain", "0"]  # configs/cod-small.yaml's flag, and a loss's
    assert main(["train", *tiny_args, "--val-fraction", "0", "--keep-last", "2", *recipe]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["data"]["augment"] == "flip" and written["optim"]["boundary_gain"] == 0
    assert "no validation (--val-fraction 0)" in out and "nothing to train" not in out
    epoch_lines = [line for line in out.splitlines() if line.startswith("Epoch ")]
    assert len(epoch_lines) == 2 and all("| no validation |" in line for line in epoch_lines)
    assert "IoU: nan" not in out
    assert (
        "done: trained to epoch 2 of 2 without validation (--val-fraction 0); the weights are in "
        f"{run / 'last.pth'}" in out
    )
    assert "data: 21 training / 0 validation images" in out  # every CAM training image trains
    assert sorted(f for f in os.listdir(run) if f.endswith(".pth")) == [
        "epoch_1.pth",
        "epoch_2.pth",
        "last.pth",
    ]
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 2
    # a finished run resumed without more epochs still has nothing to train
    assert main(["train", *tiny_args, "--val-fraction", "0", "--resume-from", str(run / "last.pth")]) == 0
    assert "nothing to train: the run already ended at epoch 2 of 2" in capsys.readouterr().out


def test_four_benchmarks_check_train_and_evaluate(benchmarks, tmp_path, capsys):
    """COD10K-v3 + CAMO + NC4K + CHAMELEON in their download shapes: data check, training (on
    COD10K CAM + CAMO train, the field's set) and evaluate (one row per dataset, right counts)."""
    from .conftest import BENCHMARK_COUNTS

    for name, root in benchmarks.items():
        assert main(["data", "check", root, "--json"]) == 0, name
        report = json.loads(capsys.readouterr().out)
        assert report["problems"] == [] and {s["dataset"] for s in report["splits"]} == {name}
    roots = list(benchmarks.values())
    assert (
        main(
            [
                "train",
                "--dataset-path",
                *roots,
                "--checkpoint-dir",
                str(tmp_path / "run"),
                "--backbone",
                "edgenext_xx_small",
                "--num-experts",
                "2",
                "--img-size",
                "64",
                "--batch-size",
                "4",
                "--num-workers",
                "0",
                "--decoder-channels",
                "16",
                "--epochs",
                "1",
                "--stage1-epochs",
                "1",
                "--val-fraction",
                "0.2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    n_train = BENCHMARK_COUNTS["COD10K"][0] + BENCHMARK_COUNTS["CAMO"][0]
    assert f"data: {n_train - 2} training / 2 validation images" in out
    assert "NC4K is a test-only benchmark; not used for training" in out
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "run" / "best_model.pth"),
                "--dataset-path",
                *roots,
                "--num-workers",
                "0",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    results = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert results.pop("_scored")["weights"] == "raw"  # the set scored (no EMA), beside the rows
    # the fixture's COD10K test images are all of the Aquatic super-class: its row follows COD10K's
    want = {n: c[2] for n, c in BENCHMARK_COUNTS.items()} | {"COD10K-Aquatic": BENCHMARK_COUNTS["COD10K"][2]}
    assert {name: r["images"] for name, r in results.items()} == want
    rows = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| ") and "Dataset" not in line
    ]
    order = [n for name in benchmarks for n in ([name, "COD10K-Aquatic"] if name == "COD10K" else [name])]
    assert [r.split(" | ")[0][2:] for r in rows] == order


def test_01_masks_train_like_their_0_255_copy(tmp_path, capsys):
    """0/1 label masks are read as their object: the same training, bit for bit, as with 0/255
    masks (before, every target was background), and data check names them."""
    import shutil

    import numpy as np
    import torch
    from PIL import Image

    from camodet.data.synth import write_dataset

    a, b = tmp_path / "COD10K-255", tmp_path / "COD10K-01"
    write_dataset(str(a), train=10, test=2, seed=4, noncam_every=0, size_range=(64, 80))
    shutil.copytree(a, b)
    for f in (b / "Train" / "GT_Object").iterdir():
        Image.fromarray((np.asarray(Image.open(f)) > 127).astype(np.uint8)).save(f)
    assert main(["data", "check", str(b)]) == 0
    assert "stored as 0/1 labels (object = 1)" in capsys.readouterr().out
    common = [
        "--backbone",
        "edgenext_xx_small",
        "--num-experts",
        "2",
        "--img-size",
        "64",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--decoder-channels",
        "16",
        "--epochs",
        "1",
        "--stage1-epochs",
        "1",
    ]
    for root in (a, b):
        assert (
            main(
                ["train", "--dataset-path", str(root), "--checkpoint-dir", str(tmp_path / root.name), *common]
            )
            == 0
        )
    assert "masks stored as 0/1 labels (object = 1)" in capsys.readouterr().out  # said once, when reading
    wa = torch.load(tmp_path / a.name / "last.pth", weights_only=True)
    wb = torch.load(tmp_path / b.name / "last.pth", weights_only=True)
    assert wa["metrics"] == wb["metrics"] and wa["metrics"]["val_IoU"] > 0
    assert all(
        torch.equal(wa["model_state_dict"][k], wb["model_state_dict"][k]) for k in wa["model_state_dict"]
    )
