"""Evaluation on test splits with the field's protocol: one row per dataset, from a
model (`evaluate`) or from prediction maps already on disk (`evaluate_preds_dir`)."""

import json
import os

import cv2
import numpy as np
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.dataset import CODDataset, collate
from ..data.io import IMAGE_EXTS, MASK_EXTS, DataError, read_grey, read_mask
from ..data.layouts import Sample, distinct_roots, gather
from .metrics import VARIANTS, to_uint8
from .paper import DatasetScorer
from .worst import WorstImages

TABLE_COLUMNS = ("Sm", "wFm", "meanEm", "maxEm", "adpEm", "meanFm", "maxFm", "adpFm", "MAE", "IoU", "Dice")


def split_by_dataset(dataset_paths: list[str]) -> dict[str, list[Sample]]:
    """{row name: its test samples}: a row per root (per TestDataset/<NAME> of a SINet-style
    root), named COD10K, CAMO, ... or by its folder. Two rows of one name (case aside, since the
    name is also a --save-preds folder) are refused: merged, their maps would overwrite each other."""
    out: dict[str, list[Sample]] = {}
    source: dict[str, str] = {}  # row name, case aside -> the folder of its images
    for root in distinct_roots(dataset_paths):
        for s in gather([root], "test"):
            folder = os.path.dirname(s.image)
            first = source.setdefault(s.dataset.casefold(), folder)
            if first != folder:
                raise DataError(
                    f"--dataset-path: the test images in {first} and in {folder} are both named "
                    f"{s.dataset} (a row and a --save-preds folder each); rename one dataset folder"
                )
            out.setdefault(s.dataset, []).append(s)
    for group in out.values():
        _refuse_case_twins(group)
    return out


def _refuse_case_twins(group: list[Sample]) -> None:
    """Stems that differ only in case ('A.jpg', 'a.jpg') would save one map file on a disk that
    ignores case (macOS, Windows), as two rows of one name would share one folder."""
    seen: dict[str, Sample] = {}
    for s in group:
        first = seen.setdefault(s.name.casefold(), s)
        if first is not s:
            raise DataError(
                f"{s.image}: same name as {os.path.basename(first.image)} but for case; their "
                f"--save-preds maps would be one file where case is ignored; rename one"
            )


def evaluate(
    predictor,
    dataset_paths: list[str],
    batch_size: int = 8,
    num_workers: int = 2,
    save_preds: str | None = None,
    normalise: bool = False,
    curves: dict | None = None,
    worst: WorstImages | None = None,
) -> dict:
    """{row: metrics}, predictions resized to each GT's original size; a row per dataset, and
    per COD10K super-class after COD10K. normalise: per-map min-max first (saved maps stay raw);
    curves: a dict to fill with each row's curves (Evaluator.curves); worst: offered every image."""
    results: dict = {}
    for name, group in split_by_dataset(dataset_paths).items():
        ds = CODDataset(group, predictor.img_size, train=False, norm=predictor.norm)
        loader = DataLoader(
            ds,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate,
            pin_memory=predictor.device.type == "cuda",
        )
        scorer = DatasetScorer(name, normalise)
        for batch in tqdm(_scoring_every_image(loader), desc=name, leave=False, disable=None):
            probs = predictor.probabilities(batch["image"], [gt.shape for gt in batch["gt"]])
            for j, gt in enumerate(batch["gt"]):
                sample = group[int(batch["index"][j])]
                pred = to_uint8(probs[j].cpu().numpy())
                rec = scorer.step(pred, gt, sample.name)
                if worst is not None:
                    worst.offer(rec["IoU"], name, sample, pred)
                if save_preds:
                    save_map(pred, os.path.join(save_preds, name, sample.name + ".png"))
        _collect(scorer, results, curves)
    return results


def _collect(scorer: DatasetScorer, results: dict, curves: dict | None) -> None:
    for row, ev in scorer.rows().items():
        if row in results:  # a folder named like a super-class row ('COD10K-Aquatic')
            raise DataError(f"two result rows named {row}; rename the dataset folder of that name")
        results[row] = ev.results()
        if curves is not None:
            curves[row] = ev.curves()


def _scoring_every_image(loader):
    """The loader's batches; a test image that cannot be read stops the evaluation, since
    scoring a subset would not be the field's number."""
    try:
        yield from loader
    except DataError as e:
        raise DataError(f"{e.reason}; replace it: the protocol scores every test image") from None


def save_map(pred: np.ndarray, path: str) -> None:
    """8-bit PNG, the layout PySODEvalToolkit reads: DIR/<dataset>/<stem>.png."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pred).save(path)


def evaluate_preds_dir(
    preds_dir: str,
    dataset_paths: list[str],
    normalise: bool = False,
    curves: dict | None = None,
    worst: WorstImages | None = None,
) -> dict:
    """Score prediction maps already on disk (DIR/<dataset>/<stem>.png, or DIR/<stem>.png
    for a single dataset) against the test GTs; maps of another size are resized to the
    GT's, as PySODEvalToolkit does. Rows, normalise and curves as in `evaluate`."""
    if not os.path.isdir(preds_dir):
        raise DataError(f"--preds-dir {preds_dir}: no such folder")
    sets = split_by_dataset(dataset_paths)
    results = {}
    for name, group in sets.items():
        folder = os.path.join(preds_dir, name)
        if not os.path.isdir(folder):
            if len(sets) > 1:
                raise DataError(
                    f"--preds-dir {preds_dir}: no {name}/ subfolder for dataset {name}; "
                    f"use the DIR/<dataset>/<stem>.png layout"
                )
            folder = preds_dir
        maps = _prediction_maps(folder)
        missing = [s.name for s in group if s.name not in maps]
        if missing:
            raise DataError(
                f"{folder}: no prediction for {len(missing)} of {len(group)} {name} test images "
                f"(first: {missing[0]}); predictions must be named like the GT files"
            )
        scorer = DatasetScorer(name, normalise)
        for s in tqdm(group, desc=name, leave=False, disable=None):
            gt, pred = read_mask(s.mask), read_grey(maps[s.name])  # a map is grey levels, never labels
            if pred.shape != gt.shape:
                pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
            rec = scorer.step(pred, gt, s.name)
            if worst is not None:
                worst.offer(rec["IoU"], name, s, pred)
        _collect(scorer, results, curves)
    return results


def _prediction_maps(folder: str) -> dict[str, str]:
    """{stem: path} of the image files in folder; two of one stem ('a.png', 'a.jpg') are refused,
    since which one would be scored would depend on the order the disk lists them in."""
    maps: dict[str, str] = {}
    for f in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(f)
        if ext.lower() not in IMAGE_EXTS + MASK_EXTS or f.startswith("."):
            continue
        first = maps.setdefault(stem, os.path.join(folder, f))
        if first != os.path.join(folder, f):
            raise DataError(
                f"{os.path.join(folder, f)}: a second map of {stem} (beside {os.path.basename(first)}); "
                f"keep one map per test image"
            )
    return maps


def format_table(results: dict, note: str = "") -> str:
    """Markdown: one row per dataset (and COD10K super-class), each column's variant below;
    note: a last legend line (which maps were scored, see paper.scaling_note)."""
    head = "| Dataset | " + " | ".join(TABLE_COLUMNS) + " | Images |"
    lines = [head, "|" + "---|" * (len(TABLE_COLUMNS) + 2)]
    for name, r in results.items():
        lines.append(
            f"| {name} | " + " | ".join(f"{r[c]:.4f}" for c in TABLE_COLUMNS) + f" | {r['images']} |"
        )
    lines.append("")
    lines += [f"- {c}: {VARIANTS[c]}" for c in TABLE_COLUMNS]
    if note:
        lines.append(f"- {note}")
    return "\n".join(lines)


# metrics.json's one key that is not a row: what was scored (export.provenance), so that results
# go on a model card only beside the weights they were computed for
SCORED = "_scored"


def write_results(results: dict, out_dir: str, note: str = "", scored: dict | None = None) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as fh:
        json.dump({**results, SCORED: scored} if scored else results, fh, indent=2)
    with open(os.path.join(out_dir, "metrics.csv"), "w") as fh:
        fh.write("dataset," + ",".join(TABLE_COLUMNS) + ",images\n")
        for name, r in results.items():
            fh.write(name + "," + ",".join(f"{r[c]:.6f}" for c in TABLE_COLUMNS) + f",{r['images']}\n")
    with open(os.path.join(out_dir, "metrics.md"), "w") as fh:
        fh.write(format_table(results, note) + "\n")
