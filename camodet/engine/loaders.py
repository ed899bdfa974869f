"""Samplers and loaders: data order and augmentation are pure functions of
(seed, epoch, index), split across processes."""

import contextlib
import logging
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..config import TrainConfig
from ..data.dataset import CODDataset, collate, index_seed
from ..data.normalization import Normalization
from ..launch import ProcessFailure
from ..models import backbone_normalization
from ..runs.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


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


# How torch's DataLoader words the RuntimeError of a worker that died: "DataLoader worker (pid
# 12) is killed by signal: Killed." from its SIGCHLD handler, "DataLoader worker (pid(s) 12)
# exited unexpectedly" when it finds the worker gone first; SIGKILL reads as either.
TORCH_WORKER_DIED = "DataLoader worker (pid"
KILLED = ("signal: Killed", "exited unexpectedly")


@contextlib.contextmanager
def loader_worker_failures(then: Callable[[], str]):
    """A data-loader worker that dies (the out-of-memory killer, kill -9) ends the run in one
    line, `then()` saying where to go on from. torch raises a plain RuntimeError for it, from its
    SIGCHLD handler wherever the main thread is (a step, validation, a save), so it is told by
    torch's words; a worker whose code raises comes back as that error (a DataError: one line)."""
    try:
        yield
    except RuntimeError as e:
        if not str(e).startswith(TORCH_WORKER_DIED):
            raise
        what = str(e).strip().splitlines()[0].rstrip(". ")
        fix = (
            "the out-of-memory killer ends processes so; lower --num-workers (each holds prefetched "
            "batches) or --batch-size, or give the machine more memory"
            if any(k in what for k in KILLED)
            else "--num-workers 0 loads the data in this process, where the cause shows"
        )
        raise ProcessFailure(f"{what}: {fix}; {then()}") from None


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
    """The training loader of a stage: `sampler` decides the order; workers persist if asked."""
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
