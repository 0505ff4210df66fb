"""torchrun / single-process set-up: one code path for CPU, one GPU, or N processes.

Rank and world size come from the environment that ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``); without it the process is rank 0 of 1 and no process group is created. The
backend is NCCL on CUDA and gloo on CPU (so multi-process runs are testable on any laptop).
"""

from __future__ import annotations

import datetime
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "DistEnv",
    "init_distributed",
    "is_main_process",
    "get_rank",
    "get_world_size",
    "barrier",
    "seed_everything",
    "cleanup_distributed",
]


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistEnv:
    """Initialise the process group when launched by torchrun; pick the device.

    Args:
        device: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``.
    """
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but no CUDA device is available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    backend = None
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    elif dist.is_initialized():
        backend = dist.get_backend()
    return DistEnv(rank, world, local_rank, dev, backend)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 — also after the process group is gone (``RANK`` from torchrun still names the process)."""
    return get_rank() == 0 and int(os.environ.get("RANK", "0") or 0) == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def seed_everything(seed: int, rank_offset: bool = False) -> None:
    """Seed python, numpy and torch. ``rank_offset`` adds the rank so data augmentation differs per rank."""
    s = seed + (get_rank() if rank_offset else 0)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
