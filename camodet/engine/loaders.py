"""Samplers and loaders: data order and augmentation are pure functions of
(seed, epoch, index), split across processes."""

import logging
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..config import DataConfig, TrainConfig
from ..data.dataset import CODDataset, collate, index_seed, load_pair
from ..data.io import DataError
from ..data.layouts import Sample, gather
from ..models import backbone_normalization
from ..normalization import Normalization
from .checkpoint import load_checkpoint

log = logging.getLogger(__name__)


def training_samples(data: DataConfig, skip_bad_files: bool | None = None) -> list[Sample]:
    """The training split of every dataset root (or --images/--masks), before the validation carve-out."""
    skip = data.skip_bad_files if skip_bad_files is None else skip_bad_files
    return gather(data.dataset_path, "train", data.include_noncam, skip, data.images, data.masks)


def input_normalization(cfg: TrainConfig, resume_ckpt: dict | None = None) -> Normalization:
    """The input statistics of a run: a resumed run keeps those its checkpoint was trained with
    (ImageNet's for a checkpoint from before they were saved), a new one takes the backbone's own
    from timm's pretrained config, whether or not pretrained weights are loaded."""
    if cfg.run.resume_from:
        ckpt = resume_ckpt if resume_ckpt is not None else load_checkpoint(cfg.run.resume_from, mmap=True)
        norm, source = Normalization.of_checkpoint(ckpt), f"as {cfg.run.resume_from} was trained"
    else:
        norm, source = backbone_normalization(cfg.model.backbone), f"{cfg.model.backbone}'s pretrained config"
    log.info(f"input normalisation: {norm} ({source})")
    return norm


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


# On the CPU the model's compute threads use every core; a loader worker takes its cycles from
# them. It pays only where preparing a batch costs more than 1/(cores - 1) of a step, which
# needs many cores; with few, the main process prepares batches between steps.
CPU_WORKERS_FROM_CORES = 8
GPU_MAX_WORKERS = 16


def usable_cores() -> int:
    """The cores this process may run on (its affinity, as a container or taskset sets it),
    shared among the processes torchrun started on this node."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def resolve_workers(setting: "int | str", device_type: str, cores: int | None = None) -> int:
    """--num-workers: a number as given; auto = on a GPU, the cores less one for the main process
    (up to 16); on the CPU, none below 8 cores (measured on 2: benchmarks/epoch_time.py), then
    one per 8 cores."""
    if setting != "auto":
        return int(setting)
    cores = usable_cores() if cores is None else cores
    if device_type == "cuda":
        return max(1, min(GPU_MAX_WORKERS, cores - 1))
    return cores // CPU_WORKERS_FROM_CORES


class EpochSampler(Sampler):
    """Shuffled (index, augmentation seed) pairs for one epoch and one rank. Ranks get
    equal shares (wrapping round like DistributedSampler) so collectives stay in step."""

    def __init__(self, n: int, seed: int, epoch: int, rank: int = 0, world: int = 1, start: int = 0):
        self.n, self.seed, self.epoch, self.rank, self.world = n, seed, epoch, rank, world
        self.start = start  # samples of this rank's share already seen (a mid-epoch resume)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The loader (and its persistent workers) outlives an epoch; the order does not."""
        self.epoch, self.start = epoch, start

    @property
    def total(self) -> int:
        """This rank's share of the whole epoch."""
        return -(-self.n // self.world)

    def indices(self) -> list[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist()
        order += order[: self.total * self.world - self.n]
        return order[self.rank :: self.world][self.start :]

    def __iter__(self):
        return iter([(i, index_seed(self.seed, self.epoch, i)) for i in self.indices()])

    def __len__(self) -> int:
        return max(0, self.total - self.start)


def train_loader(
    dataset: CODDataset,
    batch_size: int,
    sampler: EpochSampler,
    num_workers: int,
    pin_memory: bool,
    worker_init_fn=None,
    persistent_workers: bool = False,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=False,
        worker_init_fn=worker_init_fn,
        persistent_workers=persistent_workers and num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def val_loader(
    dataset: CODDataset, batch_size: int, rank: int, world: int, num_workers: int, worker_init_fn=None
) -> DataLoader:
    """Each validation image exactly once over all ranks (no padding duplicates)."""
    shard = torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world)))
    return DataLoader(
        shard,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=worker_init_fn,
    )
