"""torchrun environment, process groups, and which part of the work is this rank's.

Under `torchrun --nproc-per-node N`, RANK/WORLD_SIZE/LOCAL_RANK say who we are. Training averages
gradients over ranks with one all-reduce per step (the parameters start equal: rank 0's are broadcast),
each rank reading its own disjoint slice of every epoch; labeling needs no process group at all: each
rank labels a contiguous part of the data, as `--shard I/N` does for N independent jobs.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from .. import DplError


def rank_world() -> tuple[int, int]:
    """(rank, world size) from the torchrun environment; (0, 1) outside it."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise DplError("RANK and WORLD_SIZE must be integers") from None


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def shard_of(text: str | None) -> tuple[int, int]:
    """`--shard I/N` -> (I, N); without it, the torchrun rank and world size."""
    if text is None:
        return rank_world()
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise DplError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise DplError(f"--shard {text}: need 0 <= I < N")
    return i, n


def is_main() -> bool:
    return rank_world()[0] == 0


def setup(device: torch.device) -> None:
    """Join the process group (NCCL on CUDA, gloo on the CPU) once, when there is more than one rank."""
    if rank_world()[1] > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: nn.Module) -> None:
    """Every rank starts from rank 0's parameters and buffers."""
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def average_gradients(module: nn.Module) -> None:
    """Mean of the gradients over ranks, in one flat all-reduce."""
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset: offset + n].view_as(p.grad))
        offset += n


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def gather(t: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """Every rank's `t` (equal shapes), on every rank, back where `t` was; [t] outside torchrun."""
    if not dist.is_initialized():
        return [t]
    local = t.to(device)
    out = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(out, local)
    return [o.to(t.device) for o in out]


def all_ranks_agree(flag: bool, device: torch.device) -> bool:
    """True only if `flag` holds on every rank (so that all ranks take the same branch)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())
