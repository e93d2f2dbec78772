"""Data-parallel training under ``torchrun``: process group, DDP wrapping, rank-0 duties.

``torchrun`` (``python -m torch.distributed.run``) sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; without them training runs as one
process. Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: str | torch.device = "cpu") -> DistInfo:
    """Join the process group when launched by torchrun; pick this rank's device.

    With CUDA each rank takes ``cuda:LOCAL_RANK`` (an explicit ``cuda:N`` is kept only when
    not distributed).
    """
    device = torch.device(device)
    if not launched_by_torchrun():
        return DistInfo(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, device)


def wrap(model: nn.Module, info: DistInfo) -> nn.Module:
    """``model`` in DistributedDataParallel when a process group is up, else unchanged."""
    if not info.enabled:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside a DDP wrapper."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def mean_over_ranks(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average scalar logs over ranks (one all-reduce); unchanged when not distributed."""
    if not info.enabled or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64,
                     device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return dict(zip(values, (t / info.world_size).tolist()))


def teardown(info: DistInfo, wait: bool = True) -> None:
    """Leave the process group, after a barrier when ``wait`` (skip it on errors: the other
    ranks may never reach it; torchrun stops them when one rank fails)."""
    if info.enabled:
        if wait:
            dist.barrier()
        dist.destroy_process_group()
