"""Processes and devices: torchrun's environment -> a process group; rank helpers that work without one.

torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; a plain
``python tool/train.py`` is one process and needs no process group at all. The backend follows the
device: NCCL on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    """Where this process stands: its rank among ``world_size`` and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def choose_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU when CUDA is available, else the CPU; ``cpu`` or ``cuda`` to force one."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda was asked for, but torch sees no CUDA device")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_processes(preference: str = "auto") -> Processes:
    """Join torchrun's process group when started by torchrun; otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return Processes(rank, world_size, local_rank, device)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes, from the process group if there is one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def close_processes() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all processes (in place), or the tensor itself in a single process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's integer on every rank (an unseeded run's random seed, so that all ranks shuffle alike)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    number = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(number, src=0)
    return int(number.item())


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest of the ranks' integers on every rank, or ``value`` itself in a single process."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    number = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(number, op=dist.ReduceOp.MAX)
    return int(number.item())


def any_rank(value: bool, device: torch.device) -> bool:
    """True on every rank when ``value`` is true on any of them (a NaN loss on one rank stops all)."""
    return bool(max_over_ranks(int(value), device))


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def masks_agree(model: torch.nn.Module) -> bool:
    """Whether every process holds the same masks and temperatures (always true in a single process)."""
    from acosp.inject import named_mask_layers

    values = []
    for _, layer in named_mask_layers(model):
        values.append(layer.mask.detach().float().flatten())
        if hasattr(layer, "temperature"):
            values.append(layer.temperature.detach().float().flatten())
    if not values or not (dist.is_initialized() and dist.get_world_size() > 1):
        return True
    mine = torch.cat(values)
    low, high = mine.clone(), mine.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))
