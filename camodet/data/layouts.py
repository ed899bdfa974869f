"""Dataset layout detection and image/mask pairing.

A layout maps a root folder to splits: (dataset name, split, image dir, mask dir).
Split is 'train', 'test' or 'all' (a flat folder pair usable for either)."""

import logging
import os
import re
from dataclasses import dataclass

from .io import IMAGE_EXTS, MASK_EXTS, DataError, decode_mask, image_size

log = logging.getLogger("camodet")

KNOWN_NAMES = ("COD10K", "CAMO", "NC4K", "CHAMELEON")
# Benchmarks that exist only as test sets: the field never trains on them, so a flat folder
# of theirs given to training is left out (said once) instead of leaking the test set.
TEST_ONLY = ("NC4K", "CHAMELEON")
# A folder is a known benchmark when its name is the benchmark's, or the benchmark's followed by a
# version ('COD10K-v3', 'CAMO-V.1.0-CVIU2019', 'NC4K_2'): the downloads are named so. Any other
# name ('camo_easy', 'chameleon_extra', 'camouflage_hard') is a dataset of its own, labelled and
# trained on as the user's folder; a prefix match would merge rows and drop training images.
_KNOWN = re.compile(rf"^({'|'.join(KNOWN_NAMES)})(?:[-_. ]*v?[-_. ]*\d.*)?$", re.IGNORECASE)
NONCAM_TAG = "-NonCAM-"  # COD10K's non-camouflaged images (empty masks), wherever their files end up


@dataclass(frozen=True)
class SplitDir:
    """An image folder and its mask folder: one split of one dataset."""

    dataset: str
    split: str
    images: str
    masks: str
    layout: str
    # Image folders of other splits whose masks live in `masks` too (CAMO's one GT/ folder):
    # their masks are not orphans of this split.
    mask_siblings: tuple = ()


@dataclass(frozen=True)
class Sample:
    """One image/mask pair and where it comes from."""

    image: str
    mask: str
    name: str  # file stem, used for prediction file names
    dataset: str
    size: tuple = (0, 0)  # (width, height) at original resolution
    gt: str | None = None  # the original mask when `mask` is a cached, resized copy

    @property
    def is_noncam(self) -> bool:
        return is_noncam(self.name)


def is_noncam(stem: str) -> bool:
    return NONCAM_TAG in stem


def _d(*parts) -> str | None:
    p = os.path.join(*parts)
    return p if os.path.isdir(p) else None


def _dataset_name(root: str) -> str:
    base = os.path.basename(os.path.normpath(root))
    if base.lower() in ("train", "test"):  # COD10K-v3/Test given directly: the dataset is the parent
        base = os.path.basename(os.path.dirname(os.path.normpath(root))) or base
    m = _KNOWN.match(base)
    return m.group(1).upper() if m else base


def trains_on(split: SplitDir) -> bool:
    """Whether a training run uses this split: a train split, or a flat folder pair unless it is
    a test-only benchmark (gather and `data check` both ask here, so they agree)."""
    return split.split == "train" or (split.split == "all" and split.dataset not in TEST_ONLY)


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
    # CAMO: Images/Train|Test + one GT/ that holds the masks of both splits
    gt = _d(root, "GT")
    camo = {split: _d(root, "Images", sub) for split, sub in (("train", "Train"), ("test", "Test"))}
    for split, img in camo.items():
        if img and gt:
            others = tuple(d for s, d in camo.items() if s != split and d)
            found.append(SplitDir(name, split, img, gt, "CAMO", mask_siblings=others))
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
        f"Imgs + GT, or TrainDataset/TestDataset); use --images DIR --masks DIR for other folders"
    )


def _stems(folders, exts) -> set:
    return {stem for f in folders for stem in _index(f, exts)}


def _index(folder: str, exts, clashes: list | None = None) -> dict[str, str]:
    """{stem: path}; a second file of a stem already taken ('a.png' after 'a.jpg') is kept out
    and, with `clashes`, named there: files pair by stem, and a prediction is saved by stem."""
    out = {}
    for fn in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(fn)
        if ext.lower() not in exts or fn.startswith("."):
            continue
        path = os.path.join(folder, fn)
        if stem in out and clashes is not None:
            clashes.append(
                f"{path}: same name as {os.path.basename(out[stem])} (files pair, and predictions "
                f"are saved, by name without the extension)"
            )
        out.setdefault(stem, path)
    return out


@dataclass
class Listing:
    """The pairs found in a split, with the files that could not be paired."""

    samples: list
    problems: list  # one message per bad file
    noncam_skipped: int = 0


def list_samples(split: SplitDir, include_noncam: bool = False, check_sizes: bool = True) -> Listing:
    """Pair images with masks by file stem; report unmatched files and size mismatches.
    Reads headers only, so it is cheap even for thousands of files."""
    problems, samples, skipped = [], [], 0
    images = _index(split.images, IMAGE_EXTS, problems)
    masks = _index(split.masks, MASK_EXTS, problems)
    siblings = _stems(split.mask_siblings, IMAGE_EXTS)
    for stem in sorted(set(masks) - set(images) - siblings):
        where = " or ".join(sorted([split.images, *split.mask_siblings]))  # the same words from either split
        problems.append(f"{masks[stem]}: mask without an image in {where}")
    for stem, img_path in images.items():
        # By file name, in every layout: COD10K's NonCAM images also turn up in flat folders,
        # SINet-style trees and --images/--masks, and their empty masks would inflate scores.
        if is_noncam(stem) and not include_noncam:
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
                problems.append(
                    f"{mask_path}: mask is {msize[0]}x{msize[1]} but its image is {size[0]}x{size[1]}"
                )
                continue
        samples.append(Sample(img_path, mask_path, stem, split.dataset, size))
    return Listing(samples, problems, skipped)


def gather(
    paths: list[str],
    split: str,
    include_noncam: bool = False,
    skip_bad_files: bool = False,
    images: str | None = None,
    masks: str | None = None,
) -> list[Sample]:
    """All samples of the wanted split ('train' or 'test') over several roots.
    A flat folder pair ('all') counts as either split."""
    splits: list[SplitDir] = []
    test_only = []
    for root in distinct_roots(paths):
        found = [s for s in detect_layout(root) if s.split in (split, "all")]
        if split == "train":
            test_only += [(root, s) for s in found if not trains_on(s)]
            found = [s for s in found if trains_on(s)]
        if not found and not any(r == root for r, _ in test_only):
            have = ", ".join(sorted({s.split for s in detect_layout(root)}))
            raise DataError(f"{root}: has no {split} split (found: {have})")
        splits += found
    if images and masks:
        splits.append(SplitDir(_dataset_name(images), "all", images, masks, "images/masks"))
    for root, s in test_only:
        if not splits:
            raise DataError(
                f"{root}: {s.dataset} is a test-only benchmark, the field never trains on it; "
                f"to train on it anyway use --images {s.images} --masks {s.masks}"
            )
        log.info(f"{root}: {s.dataset} is a test-only benchmark; not used for training (evaluate on it)")
    samples, problems = [], []
    for s in splits:
        listing = list_samples(s, include_noncam)
        samples += listing.samples
        problems += listing.problems
        if listing.noncam_skipped:
            log.info(
                f"{s.dataset} {split}: {listing.noncam_skipped} NonCAM images left out "
                f"(the field uses camouflaged images only; --include-noncam to keep them)"
            )
        note_mask_format(s, listing.samples)
    if problems and not skip_bad_files:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        # Each problem without its own way out: the way out is said once, with the count, below.
        way_out = (
            ": the protocol scores every test image"
            if split == "test"
            else ", or use --skip-bad-files to train without them"
        )
        raise DataError(
            f"{DataError(problems[0]).reason}{more}; fix or replace it (run 'camodet data "
            f"check' to list them){way_out}"
        )
    if not samples:
        raise DataError(f"no {split} images with masks found in {', '.join(paths) or images}")
    return samples


def distinct_roots(paths: list[str]) -> list[str]:
    """The paths, refused when one folder is given twice: its images would count twice."""
    seen: dict[str, str] = {}
    for root in paths:
        first = seen.setdefault(os.path.realpath(root), root)
        if first is not root:
            raise DataError(f"--dataset-path {root}: the same folder as {first}, given twice; give it once")
    return list(paths)


def note_mask_format(split: SplitDir, samples: list) -> None:
    """Say once per mask folder when its masks are not plain 0..255 grey (0/1 labels, a palette,
    RGB label colours, alpha only) and how they are read; judged from the first mask, since a
    dataset stores all its masks alike. A mask that cannot be read is left to the loader."""
    if not samples:
        return
    try:
        _, kind = decode_mask(samples[0].mask)
    except DataError:
        return
    if kind:
        log.info(
            f"{split.masks}: masks stored as {kind} (first: {os.path.basename(samples[0].mask)}); "
            f"read accordingly ('camodet data check' counts every file)"
        )
