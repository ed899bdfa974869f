"""Which images a run trains and validates on: the training split of every dataset root,
the seeded validation carve-out, and the readable subset for validation."""

import logging

import numpy as np

from ..config import DataConfig
from .dataset import load_pair
from .io import DataError
from .layouts import Sample, gather

log = logging.getLogger(__name__)


def training_samples(data: DataConfig, skip_bad_files: bool | None = None) -> list[Sample]:
    """The training split of every dataset root (or --images/--masks), before the validation carve-out."""
    skip = data.skip_bad_files if skip_bad_files is None else skip_bad_files
    return gather(data.dataset_path, "train", data.include_noncam, skip, data.images, data.masks)


def split_train_val(samples: list[Sample], fraction: float, seed: int) -> tuple[list, list]:
    order = np.random.default_rng([seed, 7]).permutation(len(samples))
    n_val = int(round(fraction * len(samples)))
    if fraction > 0 and len(samples) > 1:
        n_val = min(max(1, n_val), len(samples) - 1)
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return [samples[i] for i in train], [samples[i] for i in val]


def readable_samples(samples: list[Sample]) -> list[Sample]:
    """Those that decode. Validation scores every image exactly once, so a bad one is
    dropped here (--skip-bad-files) instead of being stood in for by its neighbour, as a
    training sample is."""
    good = []
    for s in samples:
        try:
            load_pair(s)
        except DataError as e:
            log.warning("validation: skipping %s", e.reason)
            continue
        good.append(s)
    return good
