"""Evaluation on test splits with the field's protocol: one row per dataset, from a
model (`evaluate`) or from prediction maps already on disk (`evaluate_preds_dir`)."""

import json
import os
import shutil

import cv2
import numpy as np
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.dataset import CODDataset, collate
from ..data.io import IMAGE_EXTS, MASK_EXTS, DataError, read_grey, read_mask
from ..data.layouts import Sample, distinct_roots, gather
from ..launch import Dist, Shard, barrier, broadcast_object, gather_objects, resolve_workers
from ..options import EvaluateOptions
from ..staging import disk_full_message, is_disk_full, make_staging, swap_in
from .metrics import VARIANTS, to_uint8
from .paper import DatasetScorer, score_sample
from .workers import MetricWorkers
from .worst import WorstImages

# written last into a --save-preds folder: it marks one that a later run may replace whole
PREDS_RECORD, PREDS_FORMAT = "maps.json", "camodet-preds-v1"
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
    opts: EvaluateOptions,
    curves: dict | None = None,
    worst: WorstImages | None = None,
    d: Dist = Dist(),
) -> dict:
    """{row: metrics} of opts.dataset_path's test splits, predictions resized to each GT's original
    size; a row per dataset, and per COD10K super-class after COD10K. opts.minmax: per-map min-max
    first (saved maps stay raw); opts.workers: processes for the metrics; opts.inference: batch
    size and loader workers. curves: a dict to fill with each row's curves (Evaluator.curves);
    worst: offered every image; d: the launch, whose processes each score their share (Shard) and
    send the per-image states to rank 0, which alone gets the rows ({} elsewhere).
    opts.save_preds: a folder that gets this run's maps whole (DIR/<dataset>/<stem>.png): they are
    written beside it and swapped in at the end, so a failed run leaves it as it was and a later
    run leaves none of an earlier one's maps; a folder holding anything else is refused."""
    save_preds, inf = opts.save_preds, opts.inference
    loaders = resolve_workers(inf.num_workers, predictor.device.type)
    sets = split_by_dataset(opts.dataset_path)
    run = (predictor, sets, inf.batch_size, loaders, opts.minmax, curves, worst, opts.workers, d)
    if not save_preds:
        return _evaluate_sets(*run, None)
    check_preds_folder(save_preds)
    staging = broadcast_object(make_staging(save_preds) if d.is_main else None, d)
    try:
        results = _evaluate_sets(*run, staging)
        barrier(d)  # every process's maps are in
        if d.is_main:
            _write_preds_record(staging, sets)
            swap_in(staging, save_preds)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if is_disk_full(e):
            raise DataError(f"--save-preds {disk_full_message(save_preds, 'the maps')}") from None
        raise
    return results


def check_preds_folder(folder: str) -> None:
    """Refuse, before any work, a --save-preds path that a run may not replace whole: a file, or a
    folder holding anything but an earlier run's maps (it would be lost in the swap)."""
    if not os.path.lexists(folder):
        return
    if not os.path.isdir(folder):
        raise DataError(
            f"--save-preds {folder}: exists and is not a folder; give a folder for DIR/<dataset>/<stem>.png"
        )
    entries = sorted(os.listdir(folder))
    if entries and PREDS_RECORD not in entries:
        raise DataError(
            f"--save-preds {folder}: holds {entries[0]}, not maps that camodet evaluate saved (no "
            f"{PREDS_RECORD}); the folder is replaced whole, so pick a new one or empty it"
        )


def _write_preds_record(folder: str, sets: dict) -> None:
    with open(os.path.join(folder, PREDS_RECORD), "w") as fh:
        json.dump({"format": PREDS_FORMAT, "rows": {name: len(g) for name, g in sets.items()}}, fh, indent=2)


def _evaluate_sets(
    predictor, sets, batch_size, num_workers, normalise, curves, worst, workers, d, save_preds
) -> dict:
    """evaluate's rows, the maps saved under `save_preds` (a folder of this run's, or None)."""
    results: dict = {}
    mine_worst = WorstImages(worst.k) if worst is not None else None
    with MetricWorkers(workers) as pool:
        for name, group in sets.items():
            mine = Shard.of(d).indices(len(group), batch_size)
            ds = CODDataset([group[i] for i in mine], predictor.img_size, train=False, norm=predictor.norm)
            loader = DataLoader(
                ds,
                batch_size=batch_size,
                num_workers=num_workers,
                collate_fn=collate,
                pin_memory=predictor.device.type == "cuda",
            )

            def maps(loader=loader, mine=mine, group=group, name=name):
                for batch in tqdm(_scoring_every_image(loader), desc=name, leave=False, disable=None):
                    probs = predictor.probabilities(batch["image"], [gt.shape for gt in batch["gt"]])
                    for j, gt in enumerate(batch["gt"]):
                        index = mine[int(batch["index"][j])]
                        pred = to_uint8(probs[j].cpu().numpy())
                        if save_preds:
                            save_map(pred, os.path.join(save_preds, name, group[index].name + ".png"))
                        yield index, (pred, gt, group[index].name, normalise), pred

            states = _score(pool, _score_map, maps(), name, group, mine_worst)
            _add_up(name, group, states, normalise, d, results, curves)
    _merge_worst(worst, mine_worst, sets, d)
    return results


def _score(pool, fn, items, name: str, group: list[Sample], worst: WorstImages | None) -> list:
    """[(index in group, state)] of this process's images, fn giving (state, map or None) and
    each item's kept map, if any, standing in for the None; each image offered to `worst`."""
    states = []
    for index, (state, shipped), kept in pool.map(fn, items):
        states.append((index, state))
        if worst is not None:
            worst.offer(state["records"][0]["IoU"], name, group[index], shipped if kept is None else kept)
    return states


def _score_map(pred, gt, name: str, normalise: bool):
    """(state, None) of a map made here (run in a metric worker; the caller keeps the map)."""
    return score_sample(pred, gt, name, normalise), None


def _add_up(name, group, states, normalise, d: Dist, results: dict, curves: dict | None) -> None:
    """Rank 0 adds every process's per-image states in the dataset's order (the order one
    process would have scored them in), so the rows are the single process's to the last bit."""
    everyone = [pair for part in gather_objects(states, d) for pair in part]
    if not d.is_main:
        return
    scorer = DatasetScorer(name, normalise)
    for index, state in sorted(everyone, key=lambda pair: pair[0]):
        scorer.add(state, group[index].name)
    _collect(scorer, results, curves)


def _merge_worst(worst: WorstImages | None, mine: WorstImages | None, sets: dict, d: Dist) -> None:
    """Every process's K worst, offered to rank 0's `worst` in the order one process would
    have offered them (dataset, then image), so ties go as they would alone."""
    if worst is None:
        return
    everyone = [item for part in gather_objects(mine.items(), d) for item in part]
    rows = list(sets)
    place = {(row, s.name): (rows.index(row), j) for row, group in sets.items() for j, s in enumerate(group)}
    for iou, row, sample, pred in sorted(everyone, key=lambda item: place[item[1], item[2].name]):
        worst.offer(iou, row, sample, pred)


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
    opts: EvaluateOptions, curves: dict | None = None, worst: WorstImages | None = None, d: Dist = Dist()
) -> dict:
    """Score prediction maps already on disk (opts.preds_dir: DIR/<dataset>/<stem>.png, or
    DIR/<stem>.png for a single dataset) against the test GTs; maps of another size are resized to
    the GT's, as PySODEvalToolkit does. Rows, minmax, curves, workers and d as in `evaluate`."""
    preds_dir, normalise, workers = opts.preds_dir, opts.minmax, opts.workers
    if not os.path.isdir(preds_dir):
        raise DataError(f"--preds-dir {preds_dir}: no such folder")
    sets = split_by_dataset(opts.dataset_path)
    results: dict = {}
    mine_worst = WorstImages(worst.k) if worst is not None else None
    with MetricWorkers(workers) as pool:
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
            mine = Shard.of(d).indices(len(group))
            keep = worst is not None
            items = (
                (i, (maps[group[i].name], group[i].mask, group[i].name, normalise, keep), None)
                for i in tqdm(mine, desc=name, leave=False, disable=None)
            )
            states = _score(pool, _score_map_file, items, name, group, mine_worst)
            _add_up(name, group, states, normalise, d, results, curves)
    _merge_worst(worst, mine_worst, sets, d)
    return results


def _score_map_file(map_path: str, mask_path: str, name: str, normalise: bool, keep: bool):
    """(state, the map when keep) of a saved map against its GT (run in a metric worker)."""
    gt, pred = read_mask(mask_path), read_grey(map_path)  # a map is grey levels, never labels
    if pred.shape != gt.shape:
        pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
    return score_sample(pred, gt, name, normalise), pred if keep else None


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


def report_results(
    opts: EvaluateOptions, results: dict, scored: dict, method: str, curves: dict | None, worst
) -> None:
    """What `camodet evaluate` shows and writes of its rows: the table (Markdown or LaTeX), and
    with --out the metrics files, the curves and the worst images."""
    from .paper import format_latex, scaling_note

    note = scaling_note(opts.minmax)
    latex = opts.format == "latex"
    print(format_latex(results, method, note) if latex else format_table(results, note))
    if opts.out:
        write_results(results, opts.out, note, scored)
        print(f"wrote metrics.json, metrics.csv and metrics.md to {opts.out}")
        if latex:
            with open(os.path.join(opts.out, "metrics.tex"), "w") as fh:
                fh.write(format_latex(results, method, note) + "\n")
            print(f"wrote metrics.tex to {opts.out}")
    if curves is not None:
        from .curves import plot_curves, save_curves
        from .paper import is_super_row

        folder = os.path.join(opts.out, "curves")
        files = save_curves(curves, folder, method)
        files += plot_curves({k: v for k, v in curves.items() if not is_super_row(k)}, folder, method)
        print(f"wrote {len(files)} curve files to {folder}/ (<row>.npz, curves.npy, pr.png, fm.png, em.png)")
    if worst is not None:
        print(f"\nthe {len(worst.items())} images with the lowest IoU:\n{worst.table()}")
        print(f"wrote {worst.save(opts.out)} (image | ground truth | prediction) and worst.json")
