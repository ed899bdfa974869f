"""`camodet data check PATH`: what a dataset folder holds and what is wrong with it."""

import numpy as np
from tqdm import tqdm

from .io import DataError, read_image, read_mask
from .layouts import detect_layout, list_samples


def check_dataset(root: str, decode: bool = True) -> dict:
    """Report per split: counts, CAM/NonCAM, size distribution, and every problem
    (unmatched, size mismatch, unreadable). decode=True reads every file fully."""
    report = {"root": root, "splits": [], "problems": []}
    for split in detect_layout(root):
        listing = list_samples(split, include_noncam=True)
        problems = list(listing.problems)
        samples = listing.samples
        if decode:
            for s in tqdm(samples, desc=f"{split.dataset}/{split.split}", leave=False, disable=None):
                try:
                    read_image(s.image)
                    read_mask(s.mask)
                except DataError as e:
                    problems.append(str(e))
        widths = np.array([s.size[0] for s in samples] or [0])
        heights = np.array([s.size[1] for s in samples] or [0])
        noncam = sum(s.is_noncam for s in samples)
        report["splits"].append({
            "dataset": split.dataset, "split": split.split, "layout": split.layout,
            "images": split.images, "masks": split.masks, "pairs": len(samples),
            "cam": len(samples) - noncam, "noncam": noncam,
            "used_by_default": len(samples) - (noncam if split.layout == "COD10K-v3" else 0),
            "width": [int(widths.min()), int(np.median(widths)), int(widths.max())],
            "height": [int(heights.min()), int(np.median(heights)), int(heights.max())],
            "problems": len(problems)})
        report["problems"] += problems
    return report


def format_report(report: dict) -> str:
    lines = [f"dataset root: {report['root']}"]
    for s in report["splits"]:
        lines.append(f"  {s['dataset']} {s['split']:<5} layout {s['layout']}: {s['pairs']} pairs "
                     f"(CAM {s['cam']}, NonCAM {s['noncam']}; used by default {s['used_by_default']})")
        lines.append(f"      width min/median/max {s['width'][0]}/{s['width'][1]}/{s['width'][2]}, "
                     f"height {s['height'][0]}/{s['height'][1]}/{s['height'][2]}")
    if report["problems"]:
        lines.append(f"{len(report['problems'])} problem(s):")
        lines += [f"  - {p}" for p in report["problems"]]
    else:
        lines.append("no problems found")
    return "\n".join(lines)
