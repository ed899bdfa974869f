import os

import numpy as np
import pytest
from PIL import Image

from camodet.cli import main
from camodet.data.io import read_mask
from camodet.evaluation.curves import THRESHOLDS, load_curves
from camodet.evaluation.protocol import evaluate_preds_dir, split_by_dataset
from camodet.fields import make
from camodet.options import EvaluateOptions


@pytest.fixture(scope="module")
def preds(synth_root, tmp_path_factory):
    """Blurred, shifted GTs as prediction maps of the synthetic COD10K test split."""
    import cv2

    out = tmp_path_factory.mktemp("curve_preds")
    rng = np.random.default_rng(1)
    (out / "COD10K").mkdir()
    for i, s in enumerate(split_by_dataset([synth_root])["COD10K"]):
        gt = read_mask(s.mask).astype(np.float32)
        p = 0.8 * cv2.GaussianBlur(np.roll(gt, 2 + i, axis=0), (0, 0), 3) + rng.normal(20, 10, gt.shape)
        Image.fromarray(np.clip(p, 0, 255).astype(np.uint8)).save(out / "COD10K" / (s.name + ".png"))
    return str(out)


def test_curves_files_agree_with_the_table(synth_root, preds, tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        main(["evaluate", "--preds-dir", preds, "--dataset-path", synth_root, "--out", str(out), "--curves"])
        == 0
    )
    assert "curve files to" in capsys.readouterr().out
    folder = out / "curves"
    assert sorted(os.listdir(folder)) == ["COD10K.npz", "curves.npy", "em.png", "fm.png", "pr.png"]
    c = load_curves(str(folder / "COD10K.npz"))
    assert all(v.shape == (256,) for v in c.values())
    np.testing.assert_array_equal(c["thresholds"], THRESHOLDS)
    r = evaluate_preds_dir(make(EvaluateOptions, preds_dir=preds, dataset_path=[synth_root]))["COD10K"]
    for curve, col in (("fmeasure", "Fm"), ("emeasure", "Em")):
        assert c[curve].max() == pytest.approx(r["max" + col])
        assert c[curve].mean() == pytest.approx(r["mean" + col])
    # ascending thresholds: everything counts as object at threshold 0 (recall 1), recall falls
    assert c["recall"][0] == pytest.approx(1.0) and np.all(np.diff(c["recall"]) <= 1e-12)
    # F from the stored P and R at each threshold (beta^2 0.3), image by image averaged: close, not equal
    f = 1.3 * c["precision"] * c["recall"] / (0.3 * c["precision"] + c["recall"] + 1e-12)
    assert np.abs(f - c["fmeasure"]).max() < 0.1
    # PySODEvalToolkit's layout: {dataset: {method: {p, r, fm, em}}} of lists (its draw_curves asserts lists)
    toolkit = np.load(folder / "curves.npy", allow_pickle=True).item()
    entry = toolkit["COD10K"][os.path.basename(preds)]
    assert set(entry) == {"p", "r", "fm", "em"}
    assert all(isinstance(v, list) and len(v) == 256 for v in entry.values())
    np.testing.assert_allclose(entry["p"], c["precision"])
    for png in ("pr.png", "fm.png", "em.png"):
        im = Image.open(folder / png)
        assert im.size[0] > 300 and len(np.unique(np.asarray(im.convert("L")))) > 10  # drawn, not blank


def test_curves_need_an_output_folder(synth_root, preds, capsys):
    assert main(["evaluate", "--preds-dir", preds, "--dataset-path", synth_root, "--curves"]) == 2
    assert "--curves writes files: add --out DIR" in capsys.readouterr().err


def test_curves_from_a_model(tiny_checkpoint, synth_root, tmp_path):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                str(tiny_checkpoint),
                "--dataset-path",
                synth_root,
                "--num-workers",
                "0",
                "--out",
                str(out),
                "--curves",
            ]
        )
        == 0
    )
    c = load_curves(str(out / "curves" / "COD10K.npz"))
    assert np.all((c["precision"] >= 0) & (c["precision"] <= 1))
    toolkit = np.load(out / "curves" / "curves.npy", allow_pickle=True).item()
    assert list(toolkit["COD10K"]) == [os.path.basename(os.path.dirname(tiny_checkpoint))]
