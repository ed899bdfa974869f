"""`camodet data check PATH`: what a dataset folder holds and what is wrong with it."""

import numpy as np
from tqdm import tqdm

from .io import DataError, decode_mask, read_image
from .layouts import detect_layout, list_samples, trains_on


def check_dataset(root: str, decode: bool = True) -> dict:
    """Report per split: counts, CAM/NonCAM, size distribution, masks that are not plain
    0..255 grey (and how they are read), and every problem (unmatched, size mismatch,
    unreadable, a mask with no single meaning). decode=True reads every file fully."""
    report = {"root": root, "splits": [], "problems": []}
    for split in detect_layout(root):
        listing = list_samples(split, include_noncam=True)
        problems = list(listing.problems)
        samples = listing.samples
        formats: dict[str, dict] = {}
        if decode:
            for s in tqdm(samples, desc=f"{split.dataset}/{split.split}", leave=False, disable=None):
                try:
                    read_image(s.image)
                    _, kind = decode_mask(s.mask)
                except DataError as e:
                    problems.append(str(e))
                    continue
                if kind:
                    entry = formats.setdefault(kind, {"count": 0, "first": s.mask})
                    entry["count"] += 1
        widths = np.array([s.size[0] for s in samples] or [0])
        heights = np.array([s.size[1] for s in samples] or [0])
        noncam = sum(s.is_noncam for s in samples)
        report["splits"].append(
            {
                "dataset": split.dataset,
                "split": split.split,
                "layout": split.layout,
                "images": split.images,
                "masks": split.masks,
                "pairs": len(samples),
                "cam": len(samples) - noncam,
                "noncam": noncam,
                "used_by_default": len(samples) - noncam,  # NonCAM is left out in every layout
                # what `train` takes of them: a test split or a test-only benchmark, nothing
                "used_for_training": len(samples) - noncam if trains_on(split) else 0,
                "mask_formats": formats,
                "width": [int(widths.min()), int(np.median(widths)), int(widths.max())],
                "height": [int(heights.min()), int(np.median(heights)), int(heights.max())],
                "problems": len(problems),
            }
        )
        # CAMO's splits share one GT/ folder: a mask orphaned in both is one problem, said once
        report["problems"] += [p for p in problems if p not in report["problems"]]
    return report


def format_report(report: dict) -> str:
    """check_dataset's report as the lines `camodet data check` prints."""
    lines = [f"dataset root: {report['root']}"]
    for s in report["splits"]:
        lines.append(
            f"  {s['dataset']} {s['split']:<5} layout {s['layout']}: {s['pairs']} pairs "
            f"(CAM {s['cam']}, NonCAM {s['noncam']}; used by default {s['used_by_default']}, "
            f"for training {s['used_for_training']})"
        )
        lines.append(
            f"      width min/median/max {s['width'][0]}/{s['width'][1]}/{s['width'][2]}, "
            f"height {s['height'][0]}/{s['height'][1]}/{s['height'][2]}"
        )
        for kind, entry in s.get("mask_formats", {}).items():
            lines.append(
                f"      note: {entry['count']} mask(s) in {s['masks']} stored as {kind}, read as such "
                f"(first: {entry['first']})"
            )
    if report["problems"]:
        lines.append(f"{len(report['problems'])} problem(s):")
        lines += [f"  - {p}" for p in report["problems"]]
    else:
        lines.append("no problems found")
    return "\n".join(lines)
