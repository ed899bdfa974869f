"""The field's evaluation protocol: predictions at each GT's original size, GT
binarised at > 127, structure/enhanced/weighted-F/F-measures and MAE through
pysodmetrics, plus per-image IoU and Dice of (probability >= 0.5) vs GT,
averaged over images (empty GT and empty prediction score 1)."""

import numpy as np

# Column name -> what it is; printed under tables so every number says its variant.
VARIANTS = {
    "IoU": "mean over images of IoU(prob >= 0.5, GT); empty/empty = 1",
    "Dice": "mean over images of Dice(prob >= 0.5, GT); empty/empty = 1",
    "Sm": "S-measure (alpha 0.5), pysodmetrics",
    "wFm": "weighted F-measure, pysodmetrics",
    "meanEm": "E-measure, mean over thresholds",
    "maxEm": "E-measure, max over thresholds",
    "adpEm": "E-measure, adaptive threshold",
    "meanFm": "F-measure (beta^2 0.3), mean over thresholds",
    "maxFm": "F-measure, max over thresholds",
    "adpFm": "F-measure, adaptive threshold",
    "MAE": "mean absolute error of the probability map, averaged over images",
}


def binarise_gt(gt: np.ndarray) -> np.ndarray:
    return np.where(gt > 127, 255, 0).astype(np.uint8)


def to_uint8(prob: np.ndarray) -> np.ndarray:
    """Probability in [0, 1] -> 8-bit map, as saved prediction PNGs hold it."""
    return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)


def iou_dice(pred_bin: np.ndarray, gt_bin: np.ndarray) -> tuple[float, float]:
    inter = np.logical_and(pred_bin, gt_bin).sum()
    total = pred_bin.sum() + gt_bin.sum()
    union = total - inter
    if total == 0:
        return 1.0, 1.0
    return float(inter / union), float(2 * inter / total)


class Evaluator:
    """step() one image at a time; results() averages. full=False computes only the
    cheap per-epoch validation set (IoU, Dice, MAE, Sm)."""

    def __init__(self, full: bool = True):
        # imported here: py_sod_metrics loads scikit-learn, scikit-image and SciPy (seconds on a
        # small CPU), which the processes that import this module without scoring (`camodet plan`'s
        # step measurements, predict, export) never need
        import py_sod_metrics as sod

        self.full = full
        self.records: list[dict] = []
        self.sm, self.mae = sod.Smeasure(), sod.MAE()
        if full:
            # FmeasureV2 + FmeasureHandler: the classic Fmeasure's numbers (tested against a golden
            # table) on the API upstream keeps; the classic class is marked for removal.
            # p/r: the PR curve (per-image curves averaged, as the classic class did); they share the
            # thresholded counts the F-measure computes anyway, so they cost next to nothing.
            self.fm_handlers = {
                "fm": sod.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=0.3),
                "p": sod.PrecisionHandler(with_dynamic=True, with_adaptive=False),
                "r": sod.RecallHandler(with_dynamic=True, with_adaptive=False),
            }
            self.fm = sod.FmeasureV2(self.fm_handlers)
            self.wfm, self.em = sod.WeightedFmeasure(), sod.Emeasure()

    def step(self, pred: np.ndarray, gt: np.ndarray, name: str = "") -> dict:
        """pred: uint8 0..255 (or float 0..1) map at the GT's size; gt: uint8 grey levels."""
        if pred.shape != gt.shape:
            raise ValueError(
                f"{name}: prediction {pred.shape} and GT {gt.shape} differ in size; "
                f"resize predictions to the GT's original size"
            )
        if pred.dtype != np.uint8:
            pred = to_uint8(pred)
        gt = binarise_gt(gt)
        iou, dice = iou_dice(pred >= 128, gt > 0)  # 128/255 is the first 8-bit level >= 0.5
        self.sm.step(pred, gt)
        self.mae.step(pred, gt)
        rec = {
            "name": name,
            "IoU": iou,
            "Dice": dice,
            "Sm": float(self.sm.sms[-1]),
            "MAE": float(self.mae.maes[-1]),
        }
        if self.full:
            self.wfm.step(pred, gt)
            self.em.step(pred, gt)
            self.fm.step(pred, gt)
        self.records.append(rec)
        return rec

    def _per_image_lists(self) -> dict[str, list]:
        """Every list the evaluator and its pysodmetrics objects append one entry per image to:
        all that results() and curves() read."""
        parts = {"sm": self.sm, "mae": self.mae}
        if self.full:
            parts.update(wfm=self.wfm, em=self.em, **{f"fm.{k}": h for k, h in self.fm_handlers.items()})
        lists = {"records": self.records}
        for prefix, metric in parts.items():
            lists.update({f"{prefix}.{k}": v for k, v in vars(metric).items() if isinstance(v, list)})
        return lists

    def state(self) -> dict[str, list]:
        """The per-image entries of every image stepped so far, in order: what another
        Evaluator's extend() adds up to the same results as if it had stepped the images itself
        (so images scored in other processes give the single process's numbers exactly)."""
        return {k: list(v) for k, v in self._per_image_lists().items()}

    def extend(self, state: dict[str, list]) -> None:
        """Append the images of another Evaluator's state() (of the same `full`), after these."""
        lists = self._per_image_lists()
        if lists.keys() != state.keys():
            raise ValueError("the state comes from an Evaluator of another kind (full or not)")
        for key, entries in state.items():
            lists[key].extend(entries)

    def results(self) -> dict:
        """Means over the images stepped so far: the per-image metrics, and with `full` the
        pysodmetrics ones of the protocol."""
        if not self.records:
            return {}
        out = {k: float(np.mean([r[k] for r in self.records])) for k in ("IoU", "Dice", "Sm", "MAE")}
        if self.full:
            em, fm = self.em.get_results()["em"], self.fm.get_results()["fm"]
            out.update(
                wFm=float(self.wfm.get_results()["wfm"]),
                meanEm=float(em["curve"].mean()),
                maxEm=float(em["curve"].max()),
                adpEm=float(em["adp"]),
                meanFm=float(fm["dynamic"].mean()),
                maxFm=float(fm["dynamic"].max()),
                adpFm=float(fm["adaptive"]),
            )
        out["images"] = len(self.records)
        return out

    def curves(self) -> dict[str, np.ndarray]:
        """256-point curves, index i = threshold i/255 (ascending, as PySODEvalToolkit saves
        them; pysodmetrics holds them from threshold 255 down): precision, recall,
        F-measure and E-measure, each the mean over images of the per-image curve."""
        if not (self.full and self.records):
            raise ValueError("curves need a full Evaluator that has scored at least one image")
        fm = self.fm.get_results()
        return {
            "precision": np.flip(fm["p"]["dynamic"]),
            "recall": np.flip(fm["r"]["dynamic"]),
            "fmeasure": np.flip(fm["fm"]["dynamic"]),
            "emeasure": np.flip(self.em.get_results()["em"]["curve"]),
        }


def score_image(pred: np.ndarray, gt: np.ndarray, name: str = "", full: bool = True) -> dict[str, list]:
    """One image's state (Evaluator.state() of that image alone): computed anywhere, extended
    into an Evaluator in the single process's order."""
    ev = Evaluator(full)
    ev.step(pred, gt, name)
    return ev.state()


def mean_records(records: list[dict]) -> dict:
    """Average per-image records gathered from several processes."""
    if not records:
        return {}
    out = {k: float(np.mean([r[k] for r in records])) for k in ("IoU", "Dice", "Sm", "MAE")}
    out["images"] = len(records)
    return out
