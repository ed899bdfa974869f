"""torchrun + DistributedDataParallel. The only module that touches torch.distributed."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init(device_kind: str) -> Dist:
    """torchrun's environment decides; a single process needs no process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


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
