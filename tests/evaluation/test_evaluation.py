import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from camodet import Predictor
from camodet.cli import main
from camodet.data.dataset import CODDataset
from camodet.data.io import DataError, read_mask
from camodet.data.normalization import IMAGENET
from camodet.evaluation.metrics import Evaluator, to_uint8
from camodet.evaluation.protocol import evaluate, evaluate_preds_dir, split_by_dataset
from camodet.fields import make
from camodet.options import EvaluateOptions

from ..conftest import files_under


def test_original_resolution_differs_from_training_resolution(tiny_checkpoint, synth_root, tmp_path):
    p = Predictor.load(str(tiny_checkpoint))
    results = evaluate(
        p, make(EvaluateOptions, dataset_path=[synth_root], num_workers=0, save_preds=str(tmp_path / "preds"))
    )["COD10K"]
    samples = split_by_dataset([synth_root])["COD10K"]
    shapes = [read_mask(s.mask).shape for s in samples]
    assert any(h != w for h, w in shapes)  # synth images are not square
    for s, shape in zip(samples, shapes):  # maps saved at each GT's size
        assert np.asarray(Image.open(tmp_path / "preds" / "COD10K" / (s.name + ".png"))).shape == shape
    # the shortcut of the tool we replace: score at the network's square resolution
    ev = Evaluator(full=True)
    ds = CODDataset(samples, p.img_size, train=False)
    for item in (ds[i] for i in range(len(ds))):
        prob = torch.sigmoid(p.logits(item["image"][None]))[0, 0].numpy()
        gt = F.interpolate(
            torch.from_numpy(np.array(item["gt"])).float()[None, None], size=prob.shape, mode="nearest"
        )
        ev.step(to_uint8(prob), gt[0, 0].numpy().astype(np.uint8))
    shortcut = ev.results()
    assert results["images"] == shortcut["images"] == len(samples)
    assert any(abs(results[k] - shortcut[k]) > 1e-4 for k in ("Sm", "wFm", "MAE", "maxEm"))


def test_preds_dir_reproduces_evaluate(tiny_checkpoint, synth_root, tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                str(tiny_checkpoint),
                "--dataset-path",
                synth_root,
                "--save-preds",
                str(tmp_path / "preds"),
                "--out",
                str(out),
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                "--preds-dir",
                str(tmp_path / "preds"),
                "--dataset-path",
                synth_root,
                "--out",
                str(tmp_path / "again"),
            ]
        )
        == 0
    )
    a = json.load(open(out / "metrics.json"))
    b = json.load(open(tmp_path / "again" / "metrics.json"))
    assert b.pop("_scored") == {"preds_dir": str(tmp_path / "preds")}  # maps, not weights
    assert a.pop("_scored")["model"] == str(tiny_checkpoint)
    assert a == b and set(a) == {"COD10K"}
    table = capsys.readouterr().out
    assert "| COD10K |" in table and "- IoU: mean over images" in table
    assert sorted(os.listdir(out)) == ["metrics.csv", "metrics.json", "metrics.md"]


def test_preds_dir_problems_are_named(synth_root, tmp_path):
    from camodet.data.io import DataError

    (tmp_path / "preds" / "COD10K").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no prediction for \d+ of \d+ COD10K test images \(first: "):
        evaluate_preds_dir(
            make(EvaluateOptions, preds_dir=str(tmp_path / "preds"), dataset_path=[synth_root])
        )
    with pytest.raises(DataError, match="no such folder"):
        evaluate_preds_dir(
            make(EvaluateOptions, preds_dir=str(tmp_path / "nothing"), dataset_path=[synth_root])
        )


def test_preds_of_another_size_are_resized_to_gt(synth_root, tmp_path):
    samples = split_by_dataset([synth_root])["COD10K"]
    for s in samples:  # the GT itself, stored at half size: scores near perfect after resizing
        gt = read_mask(s.mask)
        Image.fromarray(gt).resize((gt.shape[1] // 2, gt.shape[0] // 2)).save(tmp_path / (s.name + ".png"))
    r = evaluate_preds_dir(make(EvaluateOptions, preds_dir=str(tmp_path), dataset_path=[synth_root]))[
        "COD10K"
    ]
    assert r["IoU"] > 0.9 and r["Sm"] > 0.9


def test_evaluate_with_tta_from_the_command_line(tiny_checkpoint, synth_root, tmp_path):
    for name, tta in (("plain", []), ("tta", ["--tta", "flip", "scales=0.75,1"])):
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
                    str(tmp_path / name),
                    *tta,
                ]
            )
            == 0
        )
    plain = json.load(open(tmp_path / "plain" / "metrics.json"))["COD10K"]
    tta = json.load(open(tmp_path / "tta" / "metrics.json"))["COD10K"]
    assert tta["images"] == plain["images"] and tta["MAE"] != plain["MAE"]
    assert main(["evaluate", str(tiny_checkpoint), "--dataset-path", synth_root, "--tta", "rotate"]) == 2


# The table computed on the fixed set below with the classic pysodmetrics.Fmeasure (before the
# move to FmeasureV2); any change of API or protocol must leave it as it is.
GOLDEN = {
    "COD10K": {
        "IoU": 0.5309897949887058,
        "Dice": 0.6647120034220907,
        "Sm": 0.6699472193757962,
        "MAE": 0.2542684370007286,
        "wFm": 0.39376818326531066,
        "meanEm": 0.5264599227799447,
        "maxEm": 0.9007767643172365,
        "adpEm": 0.8182914711076857,
        "meanFm": 0.43855529142557326,
        "maxFm": 0.7207166825078514,
        "adpFm": 0.6953310031523069,
        "images": 6,
    },
    "NC4K": {
        "IoU": 0.87117903930131,
        "Dice": 0.9260651629072681,
        "Sm": 0.7273506917731787,
        "MAE": 0.26285532102604825,
        "wFm": 0.22543624956774744,
        "meanEm": 0.6434016476546002,
        "maxEm": 0.9276815099326617,
        "adpEm": 0.9517113622676902,
        "meanFm": 0.27547061851898236,
        "maxFm": 0.43843965867533524,
        "adpFm": 0.4378102777405072,
        "images": 2,
    },
}
GOLDEN_ROWS = [
    "| COD10K | 0.6699 | 0.3938 | 0.5265 | 0.9008 | 0.8183 | 0.4386 | 0.7207 | 0.6953 | 0.2543 | "
    "0.5310 | 0.6647 | 6 |",
    "| NC4K | 0.7274 | 0.2254 | 0.6434 | 0.9277 | 0.9517 | 0.2755 | 0.4384 | 0.4378 | 0.2629 | "
    "0.8712 | 0.9261 | 2 |",
]


def test_evaluation_table_is_golden(tmp_path, monkeypatch):
    """Fixed synthetic GTs (one with an empty mask) and seeded imperfect maps: the table is
    the one the classic pysodmetrics API gave, to the last digit, with that API gone (as
    upstream announces)."""
    import warnings

    import cv2
    import py_sod_metrics

    monkeypatch.delattr(py_sod_metrics, "Fmeasure")

    from camodet.data.synth import write_dataset
    from camodet.evaluation.protocol import format_table

    root = tmp_path / "COD10K-v3"
    write_dataset(str(root), train=1, test=6, seed=11, noncam_every=0, size_range=(48, 80), workers=1)
    nc = tmp_path / "NC4K"
    (nc / "Imgs").mkdir(parents=True)
    (nc / "GT").mkdir()
    yy, xx = np.mgrid[:50, :70]
    blob = (((yy - 25) ** 2 + (xx - 30) ** 2) < 200).astype(np.uint8) * 255
    for stem, gt in (("empty", np.zeros((50, 70), np.uint8)), ("blob", blob)):
        Image.new("RGB", (70, 50)).save(nc / "Imgs" / f"{stem}.jpg")
        Image.fromarray(gt).save(nc / "GT" / f"{stem}.png")
    rng = np.random.default_rng(5)
    preds = tmp_path / "preds"
    for name, group in split_by_dataset([str(root), str(nc)]).items():
        (preds / name).mkdir(parents=True)
        for i, s in enumerate(group):
            gt = read_mask(s.mask).astype(np.float32)
            p = 0.6 * cv2.GaussianBlur(np.roll(gt, 3 + i, axis=1), (0, 0), 2 + i) + rng.normal(
                40, 25, gt.shape
            )
            Image.fromarray(np.clip(p, 0, 255).astype(np.uint8)).save(preds / name / (s.name + ".png"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation nudge from pysodmetrics either
        results = evaluate_preds_dir(
            make(EvaluateOptions, preds_dir=str(preds), dataset_path=[str(root), str(nc)])
        )
    assert set(results) == set(GOLDEN)
    for name, want in GOLDEN.items():
        for k, v in want.items():
            assert results[name][k] == pytest.approx(v, rel=0, abs=1e-12), (name, k)
    table = format_table(results).splitlines()
    assert table[2:4] == GOLDEN_ROWS


# --- rows: one per dataset folder, never merged, no saved map overwriting another ----------


def _flat_set(folder, seed, n=5):
    """Imgs/GT pairs img0..img{n-1} (the same stems in every set), pictures differing per set."""
    rng = np.random.default_rng(seed)
    for sub in ("Imgs", "GT"):
        (folder / sub).mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(
            folder / "Imgs" / f"img{i}.jpg"
        )
        Image.fromarray((rng.random((30, 40)) > 0.5).astype(np.uint8) * 255).save(
            folder / "GT" / f"img{i}.png"
        )
    return str(folder)


class _ImagePredictor:
    """A stand-in model: the image's red channel is its map, so each image gets a map of its own."""

    img_size, device, norm = 32, torch.device("cpu"), IMAGENET

    def probabilities(self, batch, sizes):
        return [
            torch.sigmoid(F.interpolate(x[None, :1], size=s, mode="bilinear")[0, 0])
            for x, s in zip(batch, sizes)
        ]


def test_each_folder_is_a_row_and_every_saved_map_is_read_back(tmp_path):
    """'camouflage_hard' is not CAMO and 'camo_easy' is not merged with it: two rows of five, ten
    saved maps, and --preds-dir scores the very maps `evaluate` scored."""
    roots = [_flat_set(tmp_path / "camouflage_hard", 1), _flat_set(tmp_path / "camo_easy", 2)]
    preds = tmp_path / "preds"
    direct = evaluate(
        _ImagePredictor(), make(EvaluateOptions, dataset_path=roots, num_workers=0, save_preds=str(preds))
    )
    assert {row: r["images"] for row, r in direct.items()} == {"camouflage_hard": 5, "camo_easy": 5}
    assert sum(f.endswith(".png") for _, _, files in os.walk(preds) for f in files) == 10
    again = evaluate_preds_dir(make(EvaluateOptions, preds_dir=str(preds), dataset_path=roots))
    for row in direct:
        for k in ("Sm", "wFm", "MAE", "IoU"):
            assert again[row][k] == pytest.approx(direct[row][k], abs=1e-9), (row, k)


def test_two_folders_of_one_name_are_refused(tmp_path):
    """Two CAMO downloads (or CAMO and camo) would share a row and a --save-preds folder."""
    camo = _flat_set(tmp_path / "a" / "CAMO", 1, n=1)
    for other in (tmp_path / "b" / "CAMO-V.1.0-CVIU2019", tmp_path / "c" / "camo"):
        with pytest.raises(DataError, match=r"test images in .*a/CAMO/Imgs and in .* are both named CAMO"):
            split_by_dataset([camo, _flat_set(other, 2, n=1)])


def test_a_folder_named_like_a_super_class_row_is_refused(benchmarks, tmp_path):
    """A folder 'COD10K-Aquatic' beside COD10K (whose Aquatic images make that row) would
    overwrite the super-class row in the results."""
    clash = str(tmp_path / "COD10K-Aquatic")  # a flat Image/GT_Object pair
    shutil.copytree(os.path.join(benchmarks["COD10K"], "Test"), clash)
    with pytest.raises(DataError, match="two result rows named COD10K-Aquatic"):
        evaluate(
            _ImagePredictor(),
            make(EvaluateOptions, dataset_path=[benchmarks["COD10K"], clash], num_workers=0),
        )


def test_two_maps_of_one_image_in_preds_dir_are_refused(tmp_path):
    """img0.png and img0.jpg: which one was scored would depend on the order the disk lists them."""
    root = _flat_set(tmp_path / "set", 1, n=2)
    preds = tmp_path / "preds" / "set"
    preds.mkdir(parents=True)
    for i in range(2):
        shutil.copy(os.path.join(root, "GT", f"img{i}.png"), preds / f"img{i}.png")
    (preds / "notes.txt").write_text("not a map")  # other files are not maps and are left alone
    assert (
        evaluate_preds_dir(make(EvaluateOptions, preds_dir=str(tmp_path / "preds"), dataset_path=[root]))[
            "set"
        ]["IoU"]
        == 1.0
    )
    Image.new("L", (40, 30)).save(preds / "img0.jpg")
    with pytest.raises(DataError, match=r"set/img0.png: a second map of img0 \(beside img0.jpg\); keep one"):
        evaluate_preds_dir(make(EvaluateOptions, preds_dir=str(tmp_path / "preds"), dataset_path=[root]))


def test_names_that_differ_only_in_case_are_refused(tmp_path):
    """A.jpg and a.jpg save one map file where the disk ignores case (macOS, Windows)."""
    root = _flat_set(tmp_path / "set", 1, n=1)
    for sub, ext in (("Imgs", ".jpg"), ("GT", ".png")):
        shutil.copy(os.path.join(root, sub, "img0" + ext), os.path.join(root, sub, "IMG0" + ext))
    with pytest.raises(DataError, match=r"Imgs/img0.jpg: same name as IMG0.jpg but for case; .* rename one"):
        split_by_dataset([root])


class _InvertedPredictor(_ImagePredictor):
    """Another stand-in model (other maps), whose second batch fails as an unreadable image would."""

    calls = 0

    def probabilities(self, batch, sizes):
        self.calls += 1
        if self.calls == 2:
            raise DataError("img2.jpg: unreadable image")
        return [1 - p for p in super().probabilities(batch, sizes)]


def test_saved_maps_are_one_runs_whole(tiny_checkpoint, tmp_path, capsys):
    """--save-preds DIR holds one run's maps: a run that fails midway leaves DIR as it was, a run
    of other rows replaces it whole (no earlier row's maps are left for --preds-dir to score), and
    a folder holding other files, or a file, is refused in one line before it is touched."""
    roots = [_flat_set(tmp_path / "camouflage_hard", 1), _flat_set(tmp_path / "camo_easy", 2)]
    preds = tmp_path / "preds"
    evaluate(
        _ImagePredictor(), make(EvaluateOptions, dataset_path=roots, num_workers=0, save_preds=str(preds))
    )
    before = files_under(preds)
    with pytest.raises(DataError, match="img2.jpg: unreadable image"):
        evaluate(
            _InvertedPredictor(),
            make(EvaluateOptions, dataset_path=roots, batch_size=2, num_workers=0, save_preds=str(preds)),
        )
    assert files_under(preds) == before
    assert sorted(os.listdir(tmp_path)) == ["camo_easy", "camouflage_hard", "preds"]  # no temp folder left
    evaluate(
        _ImagePredictor(), make(EvaluateOptions, dataset_path=roots[1:], num_workers=0, save_preds=str(preds))
    )
    assert sorted(os.listdir(preds)) == ["camo_easy", "maps.json"]
    with pytest.raises(DataError, match="no camouflage_hard/ subfolder"):
        evaluate_preds_dir(make(EvaluateOptions, preds_dir=str(preds), dataset_path=roots))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=f"--save-preds {mine}: holds notes.txt, not maps that camodet"):
        evaluate(
            _ImagePredictor(), make(EvaluateOptions, dataset_path=roots, num_workers=0, save_preds=str(mine))
        )
    assert files_under(mine) == {"notes.txt": b"mine"}
    afile = tmp_path / "maps.png"
    afile.write_bytes(b"a file")
    capsys.readouterr()
    args = ["evaluate", str(tiny_checkpoint), "--dataset-path", roots[0], "--save-preds", str(afile)]
    assert main([*args, "--num-workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--save-preds {afile}: exists and is not a folder" in err[0], err
    assert afile.read_bytes() == b"a file"


# evaluate with the metric function replaced by one that, in the worker scoring image FAULT_AT,
# kills its own process (the out-of-memory killer's SIGKILL) or raises (a bug in the metric code).
METRIC_FAULT = """
import os, signal, sys
import camodet.evaluation.protocol as protocol
from camodet.cli import main

real = protocol._score_map

def faulty_score_map(pred, gt, name, normalise):
    if name == os.environ["FAULT_AT"]:
        if os.environ["FAULT"] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise ValueError("the metric code broke")
    return real(pred, gt, name, normalise)

protocol._score_map = faulty_score_map  # also in each spawned worker, which runs this file first
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault, says",
    [
        ("kill", r"metric worker \d \(pid \d+\) was killed by SIGKILL while scoring; .*fewer --workers"),
        ("raise", r"metric worker \d \(pid \d+\) failed: ValueError: the metric code broke; --workers 0"),
    ],
)
def test_a_metric_worker_that_dies_or_raises_ends_evaluate_with_one_line(
    tiny_checkpoint, synth_root, tmp_path, fault, says
):
    import re
    import subprocess
    import sys

    script = tmp_path / "metric_fault.py"
    script.write_text(METRIC_FAULT)
    third = split_by_dataset([synth_root])["COD10K"][2].name
    preds, out = tmp_path / "preds", tmp_path / "out"
    args = ["evaluate", str(tiny_checkpoint), "--dataset-path", synth_root, "--num-workers", "0"]
    args += ["--batch-size", "2", "--workers", "2", "--save-preds", str(preds), "--out", str(out)]
    env = {**os.environ, "FAULT": fault, "FAULT_AT": third}
    # a lost task used to leave evaluate waiting for ever: the timeout fails the test
    proc = subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and re.search(says, err[0]), proc.stderr[-3000:]
    assert not out.exists()  # no table from part of the images
    # --save-preds gets a run's maps whole: a run that failed leaves no maps of part of the images
    assert not preds.exists() and not [f for f in os.listdir(tmp_path) if f.startswith(".")]
    if fault == "raise":
        return
    env["FAULT_AT"] = "none"  # the memory is back: the rerun scores every image
    again = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.load(open(out / "metrics.json"))["COD10K"]["images"] == 6
