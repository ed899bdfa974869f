"""DistributedDataParallel for training: wrapping, buffer averaging, the sync check; the
launchers' variables and the process group come from camodet/launch.py."""

import os
import secrets

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

# the launchers' variables and the process group live below the engine, shared with prediction
# and evaluation; their names stay importable from here
from ..launch import Dist, barrier, first_host, from_srun, gather_objects, init, shutdown, tasks_per_node

__all__ = [
    "Dist",
    "barrier",
    "first_host",
    "from_srun",
    "gather_objects",
    "init",
    "shutdown",
    "tasks_per_node",
]


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
