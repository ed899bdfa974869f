"""Dataset layout detection and image/mask pairing.

A layout maps a root folder to splits: (dataset name, split, image dir, mask dir).
Split is 'train', 'test' or 'all' (a flat folder pair usable for either)."""

import os
from dataclasses import dataclass
from typing import Optional

from .io import IMAGE_EXTS, MASK_EXTS, DataError, image_size

KNOWN_NAMES = ("COD10K", "CAMO", "NC4K", "CHAMELEON")


@dataclass(frozen=True)
class SplitDir:
    dataset: str
    split: str
    images: str
    masks: str
    layout: str


@dataclass(frozen=True)
class Sample:
    image: str
    mask: str
    name: str          # file stem, used for prediction file names
    dataset: str
    size: tuple = (0, 0)  # (width, height) at original resolution
    gt: str | None = None   # the original mask when `mask` is a cached, resized copy

    @property
    def is_noncam(self) -> bool:
        return "-NonCAM-" in self.name


def _d(*parts) -> Optional[str]:
    p = os.path.join(*parts)
    return p if os.path.isdir(p) else None


def _dataset_name(root: str) -> str:
    base = os.path.basename(os.path.normpath(root))
    for known in KNOWN_NAMES:
        if base.upper().startswith(known):
            return known
    return base


def detect_layout(root: str) -> list[SplitDir]:
    """Every split found under root; raises DataError naming what was expected."""
    if not os.path.isdir(root):
        raise DataError(f"dataset path {root} does not exist or is not a folder; check the path")
    name = _dataset_name(root)
    found: list[SplitDir] = []
    # COD10K-v3: Train|Test/Image + GT_Object
    for split, sub in (("train", "Train"), ("test", "Test")):
        img, gt = _d(root, sub, "Image"), _d(root, sub, "GT_Object")
        if img and gt:
            found.append(SplitDir(name, split, img, gt, "COD10K-v3"))
    if found:
        return found
    # CAMO: Images/Train|Test + GT
    gt = _d(root, "GT")
    for split, sub in (("train", "Train"), ("test", "Test")):
        img = _d(root, "Images", sub)
        if img and gt:
            found.append(SplitDir(name, split, img, gt, "CAMO"))
    if found:
        return found
    # SINet style: TrainDataset/{Imgs,GT} and TestDataset/<NAME>/{Imgs,GT}
    tr_img, tr_gt = _d(root, "TrainDataset", "Imgs"), _d(root, "TrainDataset", "GT")
    if tr_img and tr_gt:
        found.append(SplitDir(name, "train", tr_img, tr_gt, "SINet"))
    test_root = _d(root, "TestDataset")
    if test_root:
        for sub in sorted(os.listdir(test_root)):
            img, gt = _d(test_root, sub, "Imgs"), _d(test_root, sub, "GT")
            if img and gt:
                found.append(SplitDir(_dataset_name(sub), "test", img, gt, "SINet"))
    if found:
        return found
    # NC4K / CHAMELEON: Imgs + GT; a flat COD10K-style pair: Image + GT_Object
    for img_sub, gt_sub, layout in (("Imgs", "GT", "Imgs/GT"), ("Image", "GT_Object", "Image/GT_Object")):
        img, gt = _d(root, img_sub), _d(root, gt_sub)
        if img and gt:
            return [SplitDir(name, "all", img, gt, layout)]
    raise DataError(
        f"{root}: no known dataset layout (expected Train/Image + Train/GT_Object, Images/Train + GT, "
        f"Imgs + GT, or TrainDataset/TestDataset); use --images DIR --masks DIR for other folders")


def _index(folder: str, exts) -> dict[str, str]:
    out = {}
    for fn in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(fn)
        if ext.lower() in exts and not fn.startswith("."):
            out.setdefault(stem, os.path.join(folder, fn))
    return out


@dataclass
class Listing:
    samples: list
    problems: list          # one message per bad file
    noncam_skipped: int = 0


def list_samples(split: SplitDir, include_noncam: bool = False, check_sizes: bool = True) -> Listing:
    """Pair images with masks by file stem; report unmatched files and size mismatches.
    Reads headers only, so it is cheap even for thousands of files."""
    images = _index(split.images, IMAGE_EXTS)
    masks = _index(split.masks, MASK_EXTS)
    problems, samples, skipped = [], [], 0
    for stem in sorted(set(masks) - set(images)):
        problems.append(f"{masks[stem]}: mask without an image in {split.images}")
    for stem, img_path in images.items():
        if split.layout == "COD10K-v3" and "-NonCAM-" in stem and not include_noncam:
            skipped += 1
            continue
        mask_path = masks.get(stem)
        if mask_path is None:
            problems.append(f"{img_path}: image without a mask in {split.masks}")
            continue
        size = (0, 0)
        if check_sizes:
            try:
                size, msize = image_size(img_path), image_size(mask_path)
            except DataError as e:
                problems.append(str(e))
                continue
            if size != msize:
                problems.append(f"{mask_path}: mask is {msize[0]}x{msize[1]} but its image is "
                                f"{size[0]}x{size[1]}")
                continue
        samples.append(Sample(img_path, mask_path, stem, split.dataset, size))
    return Listing(samples, problems, skipped)


def gather(paths: list[str], split: str, include_noncam: bool = False, skip_bad_files: bool = False,
           images: Optional[str] = None, masks: Optional[str] = None) -> list[Sample]:
    """All samples of the wanted split ('train' or 'test') over several roots.
    A flat folder pair ('all') counts as either split."""
    splits: list[SplitDir] = []
    for root in paths:
        found = [s for s in detect_layout(root) if s.split in (split, "all")]
        if not found:
            have = ", ".join(sorted({s.split for s in detect_layout(root)}))
            raise DataError(f"{root}: has no {split} split (found: {have})")
        splits += found
    if images and masks:
        splits.append(SplitDir(_dataset_name(images), "all", images, masks, "images/masks"))
    samples, problems = [], []
    for s in splits:
        listing = list_samples(s, include_noncam)
        samples += listing.samples
        problems += listing.problems
    if problems and not skip_bad_files:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        # Each problem without its own way out: the way out is said once, with the count, below.
        way_out = (": the protocol scores every test image" if split == "test"
                   else ", or use --skip-bad-files to train without them")
        raise DataError(f"{DataError(problems[0]).reason}{more}; fix or replace it (run 'camodet data "
                        f"check' to list them){way_out}")
    if not samples:
        raise DataError(f"no {split} images with masks found in {', '.join(paths) or images}")
    return samples
