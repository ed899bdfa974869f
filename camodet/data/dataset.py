"""Torch datasets over paired samples. Training items are augmented with an RNG
seeded from (seed, epoch, index) that the sampler hands over, so a sample is the
same whichever worker loads it and whether or not the run was resumed."""

import logging

import numpy as np
import torch
from torch.utils.data import Dataset

from .io import DataError, read_image, read_mask
from .layouts import Sample
from .normalization import IMAGENET, Normalization
from .transforms import eval_transform, resize, train_transform

log = logging.getLogger(__name__)


def load_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    image, mask = read_image(sample.image), read_mask(sample.mask)
    if image.shape[:2] != mask.shape:
        raise DataError(
            f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{image.shape[1]}x{image.shape[0]}",
            skippable=True,
        )
    return image, mask


class CODDataset(Dataset):
    """train=True: augmented (image, mask) at img_size.
    train=False: resized image plus the original-size GT for evaluation.
    Images are normalised with `norm`, the backbone's own statistics."""

    def __init__(
        self,
        samples: list[Sample],
        img_size: int,
        train: bool,
        skip_bad_files: bool = False,
        norm: Normalization = IMAGENET,
        augment: str = "full",
    ):
        self.samples = list(samples)
        self.augment = augment
        self.norm = norm
        self.img_size = img_size
        self.train = train
        self.skip_bad_files = skip_bad_files

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, index_seed(0, 0, key))
        if not 0 <= index < len(self.samples):
            raise IndexError(index)  # also ends plain iteration, which the skip-ahead below would not
        for attempt in range(len(self.samples)):
            i = (index + attempt) % len(self.samples)
            try:
                return self._load(i, seed)
            except DataError as e:
                if not self.skip_bad_files:
                    raise
                log.warning("skipping %s", e.reason)
        raise DataError("every sample failed to load; check the dataset with 'camodet data check'")

    def _load(self, i: int, seed) -> dict:
        sample = self.samples[i]
        image, mask = load_pair(sample)
        if self.train:
            image, mask, colour = train_transform(
                np.random.default_rng(seed), image, mask, self.img_size, self.augment
            )
            return {
                "image": torch.from_numpy(self.norm.apply(image, colour)),
                "mask": torch.from_numpy((mask > 127).astype(np.float32))[None],
                "index": i,
            }
        return {
            "image": torch.from_numpy(self.norm.apply(eval_transform(image, self.img_size))),
            "mask": torch.from_numpy((resize(mask, self.img_size) > 127).astype(np.float32))[None],
            "gt": read_mask(sample.gt) if sample.gt else mask,
            "index": i,
        }


def index_seed(seed: int, epoch: int, index: int) -> list[int]:
    return [seed, epoch, index]


def collate(batch: list[dict]) -> dict:
    """Stack tensors; keep original-size GTs (different sizes) as a list."""
    out = {
        "image": torch.stack([b["image"] for b in batch]),
        "mask": torch.stack([b["mask"] for b in batch]),
        "index": torch.tensor([b["index"] for b in batch]),
    }
    if "gt" in batch[0]:
        out["gt"] = [b["gt"] for b in batch]
    return out
