"""Training-state checkpoints: atomic writes, safe reads, RNG capture, resume discovery."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from visionfm.io.atomic import save_torch_atomic
from visionfm.io.safe_load import load_checkpoint_file

__all__ = ["capture_rng_state", "restore_rng_state", "save_checkpoint", "load_training_checkpoint", "find_resume"]


def capture_rng_state() -> dict[str, Any]:
    """Torch (CPU and CUDA) and Python RNG states in a form ``weights_only`` loading accepts."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any] | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    return save_torch_atomic(state, path)


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    obj, _ = load_checkpoint_file(path)
    if not isinstance(obj, dict):
        from visionfm.errors import CheckpointError

        raise CheckpointError(f"{path}: expected a training checkpoint (a dict), found {type(obj).__name__}")
    return obj


def find_resume(run_dir: Path, resume: str | None, load_from: str | None) -> Path | None:
    """The checkpoint to resume from: ``--load_from`` (relative to the run folder or absolute), or
    ``--resume auto`` → ``<run>/checkpoint.pth`` when it exists, or an explicit ``--resume FILE``."""
    from visionfm.errors import CheckpointError

    if load_from:
        p = Path(load_from)
        p = p if p.is_absolute() or p.exists() else run_dir / p
        if not p.is_file():
            raise CheckpointError(f"--load_from {load_from}: no such file (looked at {p})")
        return p
    if resume is None or resume == "":
        return None
    if resume == "auto":
        p = run_dir / "checkpoint.pth"
        return p if p.is_file() else None
    p = Path(resume)
    if not p.is_file():
        raise CheckpointError(f"--resume {resume}: no such file")
    return p
