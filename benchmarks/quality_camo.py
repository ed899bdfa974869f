"""Quality on real camouflage: quality_real.py (camodet's small camouflage recipe,
configs/cod-small.yaml, or another --recipe, against the plain FPN baseline at an equal CPU
budget, 3 seeds, every metric of the protocol at original resolution) on the real CAMO training
photos of ../shared/data/camo_train, split once into training and validation images.

The split is fixed: benchmarks/camo_split.txt lists the validation images (20%, drawn with seed 0
from the sorted file names; `--write-split` draws it again). The script lays out the two parts as
a SINet-style tree of symlinks (TrainDataset, TestDataset/CAMO-val) in a temporary folder and
hands it to quality_real.py, so both benchmarks train and score the same way.

Budgets: the default, 600 CPU-s / thread of training per run (about 10 minutes on the 2-core
machine), and the larger one, --budget 2400.

Reproduce: PYTHONPATH=. .venv/bin/python benchmarks/quality_camo.py [--budget 600 --seeds 0 1 2]
    [--tta flip] [--recipe-args='...' --methods recipe] [--out STEM] [--keep DIR]
Every other flag is quality_real.py's. --smoke: a few images and seconds (tests/test_benchmarks.py)."""

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # quality_real, run from anywhere
import quality_real  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CAMO = os.path.join(
    os.path.dirname(os.path.dirname(HERE)), "shared", "data", "camo_train", "CAMO-V.1.0-CVIU2019"
)
SPLIT_FILE = os.path.join(HERE, "camo_split.txt")
COD_RECIPE = os.path.join(os.path.dirname(HERE), "configs", "cod-small.yaml")
VAL_NAME = "CAMO-val"


def camo_pairs(root: str) -> dict[str, tuple[str, str]]:
    """{stem: (image, mask)} of the official layout's training split: Images/Train, GT."""
    images = os.path.join(root, "Images", "Train")
    pairs = {}
    for f in sorted(os.listdir(images)):
        stem = os.path.splitext(f)[0]
        mask = os.path.join(root, "GT", stem + ".png")
        if os.path.isfile(mask):
            pairs[stem] = (os.path.join(images, f), mask)
    return pairs


def draw_split(stems: list[str], fraction: float = 0.2, seed: int = 0) -> list[str]:
    """The validation stems: a seeded draw from the sorted stems (the same on every machine)."""
    order = np.random.default_rng(seed).permutation(len(stems))
    return sorted(stems[i] for i in order[: round(fraction * len(stems))])


def read_split(path: str, stems: list[str]) -> list[str]:
    with open(path) as fh:
        val = [line.strip() for line in fh if line.strip() and not line.startswith("#")]
    missing = sorted(set(val) - set(stems))
    if missing:
        raise SystemExit(f"{path}: {len(missing)} validation images are not in the data ({missing[0]}, ...)")
    return val


def split_tree(pairs: dict[str, tuple[str, str]], val: list[str], dst: str) -> str:
    """A SINet-style tree of symlinks: TrainDataset/{Imgs,GT} and TestDataset/CAMO-val/{Imgs,GT}."""
    held = set(val)
    for stem, (image, mask) in pairs.items():
        part = os.path.join("TestDataset", VAL_NAME) if stem in held else "TrainDataset"
        for sub, src in (("Imgs", image), ("GT", mask)):
            os.makedirs(os.path.join(dst, part, sub), exist_ok=True)
            os.symlink(src, os.path.join(dst, part, sub, os.path.basename(src)))
    return dst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    p.add_argument("--camo", default=DEFAULT_CAMO, help="CAMO's official layout (Images/Train, GT)")
    p.add_argument("--split", default=SPLIT_FILE, help="the validation file list")
    p.add_argument("--write-split", action="store_true", help="draw the split again (seed 0, 20%%)")
    p.add_argument("--budget", type=float, default=600.0)
    p.add_argument("--recipe", default=COD_RECIPE, help="camodet's recipe (default configs/cod-small.yaml)")
    p.add_argument("--keep", default=None, help="keep the split tree (DIR/camo) and the recipe's runs here")
    a, rest = p.parse_known_args(argv)
    if not os.path.isdir(a.camo):
        print(f"skipped: no CAMO training photos at {a.camo} (../shared/data/camo_train)")
        return 2
    pairs = camo_pairs(a.camo)
    if a.write_split:
        with open(a.split, "w") as fh:
            fh.write("# CAMO-val: validation images of camo_train (seed 0, 20%), quality_camo.py\n")
            fh.writelines(s + "\n" for s in draw_split(sorted(pairs)))
    if a.keep and os.path.exists(os.path.join(a.keep, "camo")):
        raise SystemExit(f"--keep {a.keep}: camo/ is there from an earlier run; give a new folder")
    val = read_split(a.split, sorted(pairs))
    print(f"CAMO split: {len(pairs) - len(val)} training, {len(val)} validation images ({a.split})")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = a.keep or scratch
        data = split_tree(pairs, val, os.path.join(tmp, "camo"))
        keep = ["--keep", tmp] if a.keep else []
        return quality_real.main(
            [
                "--data",
                data,
                "--budget",
                str(a.budget),
                "--recipe",
                a.recipe,
                "--target-gain",
                "0.05",
                *keep,
                *rest,
            ]
        )


if __name__ == "__main__":
    sys.exit(main())
