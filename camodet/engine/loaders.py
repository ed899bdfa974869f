"""Samplers and loaders: data order and augmentation are pure functions of
(seed, epoch, index), split across processes."""

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..data.dataset import CODDataset, collate, index_seed
from ..data.layouts import Sample


def split_train_val(samples: list[Sample], fraction: float, seed: int) -> tuple[list, list]:
    order = np.random.default_rng([seed, 7]).permutation(len(samples))
    n_val = int(round(fraction * len(samples)))
    if fraction > 0 and len(samples) > 1:
        n_val = min(max(1, n_val), len(samples) - 1)
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return [samples[i] for i in train], [samples[i] for i in val]


class EpochSampler(Sampler):
    """Shuffled (index, augmentation seed) pairs for one epoch and one rank. Ranks get
    equal shares (wrapping round like DistributedSampler) so collectives stay in step."""

    def __init__(self, n: int, seed: int, epoch: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.epoch, self.rank, self.world = n, seed, epoch, rank, world

    def indices(self) -> list[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist()
        per_rank = -(-self.n // self.world)
        order += order[: per_rank * self.world - self.n]
        return order[self.rank::self.world]

    def __iter__(self):
        return iter([(i, index_seed(self.seed, self.epoch, i)) for i in self.indices()])

    def __len__(self) -> int:
        return -(-self.n // self.world)


def train_loader(dataset: CODDataset, batch_size: int, seed: int, epoch: int, rank: int, world: int,
                 num_workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(len(dataset), seed, epoch, rank, world),
                      num_workers=num_workers, collate_fn=collate, pin_memory=pin_memory, drop_last=False,
                      persistent_workers=False)


def val_loader(dataset: CODDataset, batch_size: int, rank: int, world: int, num_workers: int) -> DataLoader:
    """Each validation image exactly once over all ranks (no padding duplicates)."""
    shard = torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world)))
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
