import os
import warnings

import cv2
import numpy as np
import py_sod_metrics as sod
import pytest

from camodet.data.io import read_image, read_mask
from camodet.evaluation.metrics import Evaluator, iou_dice

from ..conftest import real_samples_dir


def direct(pairs):
    """pysodmetrics called the way its README does, on the same (pred, gt) uint8 maps; the F-measure
    through the classic class, which our FmeasureV2 use must agree with while it exists."""
    if not hasattr(sod, "Fmeasure"):
        pytest.skip("this pysodmetrics no longer has the classic Fmeasure to compare with")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # its nudge towards FmeasureV2
        fm = sod.Fmeasure()
    sm, wfm, em, mae = sod.Smeasure(), sod.WeightedFmeasure(), sod.Emeasure(), sod.MAE()
    for pred, gt in pairs:
        for m in (sm, wfm, em, fm, mae):
            m.step(pred=pred, gt=gt)
    e, f = em.get_results()["em"], fm.get_results()["fm"]
    return {
        "Sm": sm.get_results()["sm"],
        "wFm": wfm.get_results()["wfm"],
        "MAE": mae.get_results()["mae"],
        "meanEm": e["curve"].mean(),
        "maxEm": e["curve"].max(),
        "adpEm": e["adp"],
        "meanFm": f["curve"].mean(),
        "maxFm": f["curve"].max(),
        "adpFm": f["adp"],
    }


def ours(pairs):
    ev = Evaluator(full=True)
    for i, (pred, gt) in enumerate(pairs):
        ev.step(pred, gt, str(i))
    return ev.results()


def assert_same(pairs):
    want, got = direct(pairs), ours(pairs)
    for k, v in want.items():
        assert got[k] == pytest.approx(float(v), abs=1e-12), k


def blob(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8) * 255


def test_metrics_equal_pysodmetrics_on_generated_maps():
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(6):
        h, w = 60 + 7 * i, 90 - 5 * i
        gt = blob(h, w, h // 2, w // 3, 12 + i)
        noisy = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), 3 + i) + rng.normal(0, 30, gt.shape)
        pairs.append((np.clip(noisy, 0, 255).astype(np.uint8), gt))
    pairs.append((np.zeros((40, 50), np.uint8), np.zeros((40, 50), np.uint8)))  # empty GT
    assert_same(pairs)


@pytest.mark.skipif(real_samples_dir() is None, reason="needs ../shared/data/real_camo_samples")
def test_metrics_equal_pysodmetrics_on_real_camo_samples():
    root = real_samples_dir()
    pairs = []
    for f in sorted(os.listdir(os.path.join(root, "GT_Object"))):
        gt = read_mask(os.path.join(root, "GT_Object", f))
        img = read_image(os.path.join(root, "Image", os.path.splitext(f)[0] + ".jpg"))
        # a plausible imperfect map: a blurred, shifted GT mixed with image brightness
        pred = 0.7 * cv2.GaussianBlur(np.roll(gt, 9, axis=1).astype(np.float32), (0, 0), 6) + 0.3 * img.mean(
            2
        )
        pairs.append((np.clip(pred, 0, 255).astype(np.uint8), gt))
    assert len(pairs) == 4
    assert_same(pairs)


def test_iou_conventions_on_hand_made_masks():
    empty, full = np.zeros((4, 4), bool), np.ones((4, 4), bool)
    assert iou_dice(empty, empty) == (1.0, 1.0)
    assert iou_dice(full, empty) == (0.0, 0.0) and iou_dice(empty, full) == (0.0, 0.0)
    left, middle = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    left[:, :2], middle[:, 1:3] = True, True  # overlap 4 of union 12
    iou, dice = iou_dice(left, middle)
    assert iou == pytest.approx(1 / 3) and dice == pytest.approx(0.5)
    # through the evaluator: probability >= 0.5 counts as object, GT > 127
    ev = Evaluator(full=False)
    rec = ev.step(np.where(left, 128, 127).astype(np.uint8), np.where(middle, 200, 100).astype(np.uint8))
    assert rec["IoU"] == pytest.approx(1 / 3)


def test_prediction_of_wrong_size_refused():
    with pytest.raises(ValueError, match="differ in size"):
        Evaluator().step(np.zeros((10, 12), np.uint8), np.zeros((12, 10), np.uint8), "x")
