import json
import os

import numpy as np
import pytest
from PIL import Image

from camodet.cli import main
from camodet.data.io import read_mask
from camodet.evaluation.paper import SUPER_CLASSES, format_latex, minmax, scaling_note, super_class
from camodet.evaluation.protocol import evaluate_preds_dir, split_by_dataset
from camodet.fields import make
from camodet.options import EvaluateOptions

from ..conftest import _write

# (super-class, test images) of the small COD10K tree below; names as the download has them.
CLASSES = {"Aquatic": 3, "Terrestrial": 2, "Flying": 2, "Amphibian": 1, "Other": 1}


@pytest.fixture(scope="module")
def cod_with_classes(tmp_path_factory):
    """A COD10K-v3 test split with every super-class, one NonCAM image, and low-contrast
    prediction maps (values 40..120) beside it in preds/COD10K/."""
    base = tmp_path_factory.mktemp("paper")
    root, preds = base / "COD10K-v3", base / "preds" / "COD10K"
    rng = np.random.default_rng(7)
    n = 0
    for ci, (cls, count) in enumerate(CLASSES.items(), start=1):
        for k in range(count):
            n += 1
            stem = f"COD10K-CAM-{ci}-{cls}-{k + 3}-Animal{k}-{n}"
            _write(root / "Test" / "Image", root / "Test" / "GT_Object", stem, rng)
    _write(
        root / "Test" / "Image",
        root / "Test" / "GT_Object",
        "COD10K-NonCAM-5-Background-1-Sky-99",
        rng,
        noncam=True,
    )
    _write(root / "Train" / "Image", root / "Train" / "GT_Object", "COD10K-CAM-1-Aquatic-1-Crab-1", rng)
    preds.mkdir(parents=True)
    for s in split_by_dataset([str(root)])["COD10K"]:
        gt = read_mask(s.mask).astype(np.float32)
        p = 40 + 0.3 * np.roll(gt, 4, axis=1) + rng.normal(0, 6, gt.shape)
        Image.fromarray(np.clip(p, 40, 120).astype(np.uint8)).save(preds / (s.name + ".png"))
    return str(root), str(base / "preds")


def test_super_class_from_cod10k_names():
    assert super_class("COD10K-CAM-1-Aquatic-3-Crab-32") == "Aquatic"
    assert super_class("COD10K-CAM-3-Flying-53-Bird-3024") == "Flying"
    assert super_class("COD10K-CAM-5-Other-69-Other-4990") == "Other"
    assert super_class("COD10K-NonCAM-5-Background-1-Sky-99") is None
    assert super_class("camourflage_00012") is None
    assert super_class("COD10K-CAM-1-Synthetic-1-Blob-3") is None  # the generator's: no invented row


def test_rows_per_super_class_score_their_own_images(cod_with_classes, tmp_path):
    root, preds = cod_with_classes
    results = evaluate_preds_dir(make(EvaluateOptions, preds_dir=preds, dataset_path=[root]))
    assert list(results) == ["COD10K"] + [f"COD10K-{c}" for c in SUPER_CLASSES]
    assert results["COD10K"]["images"] == sum(CLASSES.values())  # NonCAM left out, as always
    for cls, count in CLASSES.items():
        assert results[f"COD10K-{cls}"]["images"] == count
    # a super-class row is what scoring that class's images alone gives
    alone = tmp_path / "COD10K-v3" / "Test"
    for sub in ("Image", "GT_Object"):
        (alone / sub).mkdir(parents=True)
    for f in os.listdir(os.path.join(root, "Test", "Image")):
        if "-Aquatic-" in f:
            stem = os.path.splitext(f)[0]
            os.link(os.path.join(root, "Test", "Image", f), alone / "Image" / f)
            gt = stem + ".png"
            os.link(os.path.join(root, "Test", "GT_Object", gt), alone / "GT_Object" / gt)
    only = evaluate_preds_dir(
        make(EvaluateOptions, preds_dir=preds, dataset_path=[str(tmp_path / "COD10K-v3")])
    )
    assert only["COD10K"] == results["COD10K-Aquatic"]


def test_minmax_is_opt_in_and_stated(cod_with_classes, capsys):
    root, preds = cod_with_classes
    plain = evaluate_preds_dir(make(EvaluateOptions, preds_dir=preds, dataset_path=[root]))["COD10K"]
    norm = evaluate_preds_dir(make(EvaluateOptions, preds_dir=preds, dataset_path=[root], minmax=True))[
        "COD10K"
    ]
    # maps never reach 128 (0.5) unnormalised: IoU at 0.5 is 0 on the raw maps
    assert plain["IoU"] == 0 and norm["IoU"] > 0.3
    # pysodmetrics already rescales each map to its min..max, so its columns barely move
    # (8-bit rounding of the stretched map): the legend says so rather than hiding it
    assert norm["Sm"] == pytest.approx(plain["Sm"], abs=5e-3)
    assert "rescales each map to its min..max" in scaling_note(False)
    assert main(["evaluate", "--preds-dir", preds, "--dataset-path", root, "--minmax"]) == 0
    assert "- maps: min-max normalised per map (--minmax)" in capsys.readouterr().out
    const = np.full((4, 5), 77, np.uint8)
    assert np.array_equal(minmax(const), const)
    ramp = np.array([[60, 110, 160]], np.uint8)
    assert minmax(ramp).tolist() == [[0, 128, 255]]


def test_latex_table_has_the_papers_columns(cod_with_classes, tmp_path, capsys):
    root, preds = cod_with_classes
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--preds-dir",
                preds,
                "--dataset-path",
                root,
                "--format",
                "latex",
                "--out",
                str(out),
                "--method",
                "Ours_v2",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    results = json.load(open(out / "metrics.json"))
    assert (out / "metrics.tex").read_text().strip() in text
    main_table, class_table = text.split(r"\end{table}")[:2]
    assert r"\begin{tabular}{l|cccc}" in main_table and r"\toprule" in main_table
    heads = main_table.splitlines()[main_table.splitlines().index(r"\toprule") + 2]
    assert heads == (
        r"Method & $S_\alpha\uparrow$ & $F^w_\beta\uparrow$ & $E^m_\phi\uparrow$ & "
        r"$\mathcal{M}\downarrow$ \\"
    )
    r = results["COD10K"]
    want = f"Ours\\_v2 & {r['Sm']:.3f} & {r['wFm']:.3f} & {r['meanEm']:.3f} & {r['MAE']:.3f} \\\\"
    assert want in main_table.splitlines()
    assert r"\multicolumn{4}{c}{COD10K (9)}" in main_table
    assert "pysodmetrics" in main_table and r"\caption{" in main_table  # the legend
    # second table: the five super-classes, in the paper's order
    assert class_table.index("COD10K-Aquatic (3)") < class_table.index("COD10K-Other (1)")
    assert r"\begin{tabular}{l|cccc|cccc|cccc|cccc|cccc}" in class_table


def test_latex_escapes_names():
    r = {"Sm": 0.5, "wFm": 0.4, "meanEm": 0.6, "MAE": 0.1, "images": 2}
    tex = format_latex({"MY_SET": r}, method="a&b%", note="x")
    assert "MY\\_SET (2)" in tex and "a\\&b\\% & 0.500 & 0.400 & 0.600 & 0.100" in tex
