import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from camodet import Predictor
from camodet.cli import main
from camodet.data.dataset import CODDataset
from camodet.data.io import read_mask
from camodet.evaluation import evaluate, evaluate_preds_dir, split_by_dataset
from camodet.metrics import Evaluator, to_uint8


def test_original_resolution_differs_from_training_resolution(tiny_checkpoint, synth_root, tmp_path):
    p = Predictor.load(str(tiny_checkpoint))
    results = evaluate(p, [synth_root], num_workers=0, save_preds=str(tmp_path / "preds"))["COD10K"]
    samples = split_by_dataset([synth_root])["COD10K"]
    shapes = [read_mask(s.mask).shape for s in samples]
    assert any(h != w for h, w in shapes)                            # synth images are not square
    for s, shape in zip(samples, shapes):                            # maps saved at each GT's size
        assert np.asarray(Image.open(tmp_path / "preds" / "COD10K" / (s.name + ".png"))).shape == shape
    # the shortcut of the tool we replace: score at the network's square resolution
    ev = Evaluator(full=True)
    ds = CODDataset(samples, p.img_size, train=False)
    for item in (ds[i] for i in range(len(ds))):
        prob = torch.sigmoid(p.logits(item["image"][None]))[0, 0].numpy()
        gt = F.interpolate(torch.from_numpy(np.array(item["gt"])).float()[None, None], size=prob.shape, mode="nearest")
        ev.step(to_uint8(prob), gt[0, 0].numpy().astype(np.uint8))
    shortcut = ev.results()
    assert results["images"] == shortcut["images"] == len(samples)
    assert any(abs(results[k] - shortcut[k]) > 1e-4 for k in ("Sm", "wFm", "MAE", "maxEm"))


def test_preds_dir_reproduces_evaluate(tiny_checkpoint, synth_root, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(tiny_checkpoint), "--dataset-path", synth_root, "--save-preds",
                 str(tmp_path / "preds"), "--out", str(out), "--num-workers", "0"]) == 0
    assert main(["evaluate", "--preds-dir", str(tmp_path / "preds"), "--dataset-path", synth_root,
                 "--out", str(tmp_path / "again")]) == 0
    a = json.load(open(out / "metrics.json"))
    b = json.load(open(tmp_path / "again" / "metrics.json"))
    assert a == b and set(a) == {"COD10K"}
    table = capsys.readouterr().out
    assert "| COD10K |" in table and "- IoU: mean over images" in table
    assert sorted(os.listdir(out)) == ["metrics.csv", "metrics.json", "metrics.md"]


def test_preds_dir_problems_are_named(synth_root, tmp_path):
    from camodet.data.io import DataError
    (tmp_path / "preds" / "COD10K").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no prediction for \d+ of \d+ COD10K test images \(first: "):
        evaluate_preds_dir(str(tmp_path / "preds"), [synth_root])
    with pytest.raises(DataError, match="no such folder"):
        evaluate_preds_dir(str(tmp_path / "nothing"), [synth_root])


def test_preds_of_another_size_are_resized_to_gt(synth_root, tmp_path):
    samples = split_by_dataset([synth_root])["COD10K"]
    for s in samples:  # the GT itself, stored at half size: scores near perfect after resizing
        gt = read_mask(s.mask)
        Image.fromarray(gt).resize((gt.shape[1] // 2, gt.shape[0] // 2)).save(tmp_path / (s.name + ".png"))
    r = evaluate_preds_dir(str(tmp_path), [synth_root])["COD10K"]
    assert r["IoU"] > 0.9 and r["Sm"] > 0.9


def test_evaluate_with_tta_from_the_command_line(tiny_checkpoint, synth_root, tmp_path):
    for name, tta in (("plain", []), ("tta", ["--tta", "flip", "scales=0.75,1"])):
        assert main(["evaluate", str(tiny_checkpoint), "--dataset-path", synth_root, "--num-workers", "0",
                     "--out", str(tmp_path / name), *tta]) == 0
    plain = json.load(open(tmp_path / "plain" / "metrics.json"))["COD10K"]
    tta = json.load(open(tmp_path / "tta" / "metrics.json"))["COD10K"]
    assert tta["images"] == plain["images"] and tta["MAE"] != plain["MAE"]
    assert main(["evaluate", str(tiny_checkpoint), "--dataset-path", synth_root, "--tta", "rotate"]) == 2
