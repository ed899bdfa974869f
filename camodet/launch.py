"""Which process this is among several started by torchrun or srun (all ones when alone), and
the process group they share: training (engine/distributed.py builds DDP on it), sharded
prediction and sharded evaluation all read the launchers' variables here, and only here.

Prediction and evaluation also take their share of the inputs here (Shard): blocks of
consecutive inputs in their stable sorted order, dealt round-robin, so every input is in exactly
one share. With the block a batch, each process forms the batches one process would have formed,
so every image gets the same numbers; videos and frame sequences are dealt whole (block 1 over
clips). start() is their per-process setup: its own GPU (LOCAL_RANK), or its part of the CPU's
threads."""

import os
import re
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .models.device import resolve_device


class ProcessFailure(RuntimeError):
    """A process this command runs beside or started (a metric worker, a data-loader worker,
    another process of the launch) died or failed; the message names it and what to do."""


def exit_status(code: int | None) -> str:
    """How a child process ended, from its exit code (negative: the signal that ended it)."""
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


@dataclass(frozen=True)
class Dist:
    """This process's place among the processes of a launch (all ones when alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # processes on this node
    launcher: str = "single"  # single | torchrun | srun

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def nodes(self) -> int:
        return max(1, self.world // max(1, self.local_world))

    def describe(self) -> str:
        return (
            f"launcher {self.launcher}: {self.world} process(es) on {self.nodes} node(s), "
            f"{self.local_world} per node"
        )


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[07-09,12],cpu3' -> 'gpu07'."""
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise RuntimeError(f"cannot read the SLURM node list {nodelist!r}; set MASTER_ADDR")
    prefix, ranges = m.group(1), m.group(3)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def tasks_per_node(text: str) -> int:
    """SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE: '2(x3)' or '2,1' -> the first count."""
    return int(re.match(r"\d+", text).group(0)) if text and re.match(r"\d+", text) else 1


def from_srun(env=os.environ) -> dict | None:
    """torchrun's variables from what srun sets for each task (None: not an srun launch of
    several tasks). MASTER_PORT, unless given, comes from the job id so that two jobs on a
    node do not collide."""
    if "SLURM_PROCID" not in env or int(env.get("SLURM_NTASKS", "1")) <= 1:
        return None
    nodelist = (
        env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
    )
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": str(
            tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", "1"))
        ),
        "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(nodelist or "localhost"),
        "MASTER_PORT": env.get("MASTER_PORT") or str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000),
    }


def init(device_kind: str) -> Dist:
    """torchrun's environment (one or several nodes), else srun's, decides; a single process
    needs no process group."""
    launcher = "torchrun"
    if "WORLD_SIZE" not in os.environ:
        srun = from_srun()
        if srun is None:
            return Dist()
        os.environ.update(srun)
        launcher = "srun"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(
        dist.get_rank(),
        dist.get_world_size(),
        int(os.environ.get("LOCAL_RANK", "0")),
        int(os.environ.get("LOCAL_WORLD_SIZE", world)),
        launcher,
    )


def own_device(name: str, d: Dist) -> torch.device:
    """resolve_device, with each process of a node on its own GPU (LOCAL_RANK)."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", d.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def gather_objects(obj, d: Dist) -> list:
    if not d.enabled:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, d: Dist):
    """Rank 0's `obj` on every rank (the others pass anything, e.g. None)."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Shard:
    """This process's share: blocks rank, rank + world, ... of the inputs (all of them alone)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def of(cls, d: Dist) -> "Shard":
        return cls(d.rank, d.world)

    def indices(self, count: int, block: int = 1) -> list[int]:
        """Positions of this share's inputs among `count`, in order."""
        block = max(1, block)
        return [i for i in range(count) if (i // block) % self.world == self.rank]


def start(device: str) -> tuple[Dist, torch.device]:
    """Join the launch (a process group when there are several processes: gloo on the CPU)
    and pick this process's device; on the CPU the processes of a node split its cores, as
    `torch` would otherwise give each of them all of them and they would fight over them."""
    d = init("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    own = own_device(device, d)
    if d.enabled and own.type == "cpu":
        threads = max(1, (os.cpu_count() or 1) // d.local_world)
        torch.set_num_threads(threads)
        # OpenCV's pool as well: it resizes and decodes the maps that evaluate scores
        import cv2

        cv2.setNumThreads(threads)
    return d, own
