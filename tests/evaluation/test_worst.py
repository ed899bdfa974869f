import json

import numpy as np
import pytest
from PIL import Image

from camodet import Predictor
from camodet.cli import main
from camodet.data.io import read_mask
from camodet.data.layouts import Sample
from camodet.errors import ConfigError
from camodet.evaluation.metrics import binarise_gt, iou_dice, to_uint8
from camodet.evaluation.protocol import split_by_dataset
from camodet.evaluation.worst import CAPTION, WorstImages


def _sample(i: int) -> Sample:
    return Sample(image=f"img{i}.jpg", mask=f"gt{i}.png", name=f"s{i}", dataset="X")


def test_keeps_the_k_lowest_worst_first_ties_in_order_offered():
    worst = WorstImages(3)
    ious = [0.9, 0.2, 0.5, 0.2, 0.1, 0.8, 0.5]
    for i, iou in enumerate(ious):
        worst.offer(iou, "X", _sample(i), np.zeros((2, 2), np.uint8))
    assert [(iou, s.name) for iou, _, s, _ in worst.items()] == [(0.1, "s4"), (0.2, "s1"), (0.2, "s3")]
    with pytest.raises(ConfigError, match="--worst 0: give how many images"):
        WorstImages(0)


def test_evaluate_worst_lists_and_shows_the_lowest_iou_images(tiny_checkpoint, synth_root, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", str(tiny_checkpoint), "--dataset-path", synth_root, "--num-workers", "0"]
    assert main([*args, "--out", str(out), "--worst", "3"]) == 0
    printed = capsys.readouterr().out
    # every image's IoU, independently: the listed ones are the three lowest, worst first
    predictor = Predictor.load(str(tiny_checkpoint))
    scores = sorted(
        (iou_dice(to_uint8(predictor.predict(s.image)) >= 128, binarise_gt(read_mask(s.mask)) > 0)[0], s.name)
        for s in split_by_dataset([synth_root])["COD10K"]
    )
    listing = json.loads((out / "worst.json").read_text())
    assert [r["rank"] for r in listing] == [1, 2, 3]
    assert [r["IoU"] for r in listing] == pytest.approx([iou for iou, _ in scores[:3]], abs=1e-6)
    for r in listing:
        assert f"| {r['rank']} | COD10K | " in printed and f"| {r['IoU']:.4f} |" in printed
    panel = np.asarray(Image.open(out / "worst.png"))
    assert panel.shape == (3 * (CAPTION + 224), 3 * 224, 3)  # three captioned rows: image | GT | prediction
    assert "wrote " + str(out / "worst.png") in printed


def test_worst_needs_somewhere_to_write(tiny_checkpoint, synth_root, capsys):
    assert main(["evaluate", str(tiny_checkpoint), "--dataset-path", synth_root, "--worst", "3"]) == 2
    assert "--worst writes a panel: add --out DIR" in capsys.readouterr().err
