"""torchrun / DDP plumbing: one process per device, NCCL on GPUs, gloo on CPUs.

The same training command runs alone or under `torchrun --nproc_per_node N`;
without the torchrun environment everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """Where this process stands: rank, world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> DistInfo:
    """Join the torchrun process group when launched by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def teardown(info: DistInfo) -> None:
    """Leave the process group if this module joined one."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_with_grad(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate `x` from every process along dim 0, keeping gradients to each part."""
    if not info.enabled:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), 0)


def all_gather_no_grad(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate `x` (no gradient needed) from every process along dim 0."""
    if not info.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


def mean_across(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average of a tensor over processes."""
    if not info.enabled:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / info.world_size


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's `obj` on every process."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    """Wait for every process."""
    if info.enabled:
        dist.barrier()
