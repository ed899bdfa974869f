"""Which share of the inputs is this process's when `camodet predict` or `camodet evaluate`
runs under torchrun or srun (camodet/launch.py reads their variables): blocks of consecutive
inputs in their stable sorted order, dealt round-robin, so every input is in exactly one
share. With the block a batch, each process forms the batches one process would have formed,
so every image gets the same numbers; videos and frame sequences are dealt whole (block 1 over
clips). Also the per-process setup: its own GPU (LOCAL_RANK), or its part of the CPU's threads."""

import os
from dataclasses import dataclass

import torch

from .. import launch


@dataclass(frozen=True)
class Shard:
    """This process's share: blocks rank, rank + world, ... of the inputs (all of them alone)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def of(cls, d: launch.Dist) -> "Shard":
        return cls(d.rank, d.world)

    def indices(self, count: int, block: int = 1) -> list[int]:
        """Positions of this share's inputs among `count`, in order."""
        block = max(1, block)
        return [i for i in range(count) if (i // block) % self.world == self.rank]


def start(device: str) -> tuple[launch.Dist, torch.device]:
    """Join the launch (a process group when there are several processes: gloo on the CPU)
    and pick this process's device; on the CPU the processes of a node split its cores, as
    `torch` would otherwise give each of them all of them and they would fight over them."""
    d = launch.init("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    own = launch.own_device(device, d)
    if d.enabled and own.type == "cpu":
        threads = max(1, (os.cpu_count() or 1) // d.local_world)
        torch.set_num_threads(threads)
        # OpenCV's pool as well: it resizes and decodes the maps that evaluate scores
        import cv2

        cv2.setNumThreads(threads)
    return d, own
