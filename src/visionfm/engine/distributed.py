"""torchrun / single-process set-up: one code path for CPU, one GPU, or N processes.

Rank and world size come from the environment that ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``); without it the process is rank 0 of 1 and no process group is created. The
backend is NCCL on CUDA and gloo on CPU (so multi-process runs are testable on any laptop).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "command_session",
    "DistEnv",
    "init_distributed",
    "launch_ranks",
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


def launch_ranks(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` of this process: torchrun's ``RANK`` / ``WORLD_SIZE`` /
    ``LOCAL_RANK``, else SLURM's ``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID`` (``srun`` without
    torchrun, the original's intent; its code never set the world size), else one process.

    Under SLURM with several tasks, ``MASTER_ADDR`` and ``MASTER_PORT`` must be set (the rendezvous of
    ``init_method="env://"``); without them this raises :class:`~visionfm.errors.ConfigError` rather
    than start N independent rank-0 runs. The SLURM values are exported as ``RANK`` / ``WORLD_SIZE`` /
    ``LOCAL_RANK`` so that everything below sees one launcher.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        world = int(env["SLURM_NTASKS"])
        if world > 1:
            from visionfm.errors import ConfigError

            missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
            if missing:
                raise ConfigError(
                    f"SLURM started {world} tasks but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                    "not set: export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1) and "
                    "MASTER_PORT=29500 in the job script, or launch with torchrun")
            rank, local = int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", "0"))
            if environ is None:
                os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
            return rank, world, local
    return 0, 1, 0


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistEnv:
    """Initialise the process group when launched by torchrun or SLURM (:func:`launch_ranks`); pick the device.

    Args:
        device: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``.
    """
    rank, world, local_rank = launch_ranks()
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


@contextlib.contextmanager
def command_session(device: str = "auto", seed: int | None = None) -> Iterator[DistEnv]:
    """One command's process: the process group (under torchrun) and device, logging on the main rank,
    the seed (when given, the same on every rank); the group is torn down however the command ends."""
    from visionfm.engine.logging import setup_logging

    env = init_distributed(device)
    setup_logging(env.is_main)
    try:
        if seed is not None:
            seed_everything(seed)
        yield env
    finally:
        cleanup_distributed()


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
