"""torchrun or srun + DistributedDataParallel. The only module that touches torch.distributed."""

import os
import re
import secrets
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Dist:
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


def folder_is_shared(folder: str, d: Dist) -> bool:
    """Whether every process sees the same `folder` (a shared filesystem) rather than one per
    node (local scratch such as $TMPDIR): rank 0 leaves a token there and everyone looks."""
    if not d.enabled:
        return True
    os.makedirs(folder, exist_ok=True)
    token = gather_objects(secrets.token_hex(8) if d.is_main else None, d)[0]
    probe = os.path.join(folder, f".camodet-probe-{token}")
    if d.is_main:
        open(probe, "w").close()
    barrier(d)
    seen = all(gather_objects(os.path.exists(probe), d))
    barrier(d)
    if d.is_main:
        os.unlink(probe)
    return seen


def wrap(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """DDP registers only parameters that require grad at construction: call again
    whenever the trainable set changes."""
    if not d.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def gather_objects(obj, d: Dist) -> list:
    if not d.enabled:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        t = t.clone()
        dist.all_reduce(t)
        t /= d.world
    return t


def sync_buffers(model: torch.nn.Module, d: Dist) -> None:
    """Average the floating buffers (BatchNorm running statistics) over the ranks. DDP runs
    with broadcast_buffers=False, so each rank's statistics follow its own batches; this
    brings them together once per epoch, before validation and saving. Buffers that agree
    everywhere (frozen norms) are left bit-identical. The running-statistics update is
    affine, so averaging at a mid-epoch stop and again at the end of the epoch gives what
    averaging once at the end would."""
    if not d.enabled:
        return
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.detach().reshape(-1).double() for b in buffers])
    mean, low, high = flat.clone(), flat.clone(), flat.clone()
    dist.all_reduce(mean)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    merged = torch.where(low == high, flat, mean / d.world)
    for b, part in zip(buffers, merged.split([b.numel() for b in buffers])):
        b.copy_(part.view_as(b))


def check_in_sync(model: torch.nn.Module, d: Dist) -> None:
    """Raise if any rank's parameters or floating buffers differ from rank 0's (a DDP
    wrapping bug, or norm statistics left to drift, would show here)."""
    tensors = list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]
    sums = torch.stack([t.detach().double().sum() for t in tensors]).cpu()
    gathered = gather_objects(sums, d)
    bad = [r for r, s in enumerate(gathered) if not torch.equal(s, gathered[0])]
    if bad:
        raise RuntimeError(f"parameters or buffers of rank(s) {bad} differ from rank 0 after training")


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
