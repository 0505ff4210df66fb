"""Claiming a run folder at the start of a training run (issue 13).

A run folder that already holds a run — finished or interrupted — is never overwritten silently:
without a resume flag the command stops with one line naming the folder and what is in it; with
``--overwrite`` the earlier run's outputs are moved away in one rename and deleted before anything new
is written. Temporaries of interrupted atomic writes are removed either way.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Sequence

from visionfm.errors import ConfigError
from visionfm.io.atomic import remove_stale_temps

__all__ = ["RUN_MARKERS", "claim_run_dir", "existing_run_files"]

log = logging.getLogger(__name__)

#: files whose presence means a folder holds a run (of any training command)
RUN_MARKERS = (
    "checkpoint.pth",
    "checkpoint_last.safetensors",
    "checkpoint_best.safetensors",
    "checkpoint_best_finetune.pth",
    "log.txt",
)

#: what a run writes at the top of its folder; ``--overwrite`` of a run that writes into a shared
#: ``--output_dir`` (no ``--name``) removes these and nothing else
_RUN_OUTPUTS = (
    "log.txt", "config.yaml", "checkpoint*.pth", "checkpoint_*.safetensors", "checkpoint_*.json", "tf_logs",
    "report", "model", "metrics.json", "report.html", "*_results.json", "best.npy", "target.npy",
    "test_subjects.json", "evaluate.json", "predictions", "predictions.json", "overlays",
)
#: caches a run keeps through ``--overwrite`` (checked against the encoder before reuse)
_CACHES = ("features",)
_TRASH = ".visionfm-overwritten-"


def existing_run_files(run_dir: str | os.PathLike[str], markers: Sequence[str] = RUN_MARKERS) -> list[str]:
    """The marker files of an earlier run present in ``run_dir`` (none: the folder is free)."""
    d = Path(run_dir)
    return [m for m in markers if (d / m).exists()]


def claim_run_dir(run_dir: str | os.PathLike[str], *, resume: bool, overwrite: bool, resume_flag: str,
                  named: bool = True, is_main: bool = True) -> None:
    """Check ``run_dir`` before a training run writes to it.

    Args:
        resume: the run continues an earlier one (``--resume``, ``--load_from`` a training state).
        overwrite: ``--overwrite``: replace an earlier run.
        resume_flag: the flag the error suggests (``--resume auto`` for pretraining, ``--resume`` else).
        named: the folder is ``<output_dir>/<name>``, the run's own (``--overwrite`` replaces the whole
            folder); otherwise it is ``--output_dir`` itself and only the files a run writes are removed.
        is_main: only the main process removes anything (every process checks).

    Raises:
        ConfigError: the folder holds a run and neither ``resume`` nor ``overwrite`` is set, both are
            set, or ``run_dir`` exists and is not a folder.
    """
    d = Path(run_dir)
    if resume and overwrite:
        raise ConfigError(f"--overwrite and {resume_flag} contradict each other: give one")
    if d.exists() and not d.is_dir():
        raise ConfigError(f"run folder {d} exists and is not a folder; choose another --output_dir/--name")
    if is_main:
        _remove_leftovers(d, named)
    found = existing_run_files(d)
    if found and not resume:
        if not overwrite:
            raise ConfigError(
                f"{d} already holds a run ({', '.join(found)}); pass {resume_flag} to continue it or "
                "--overwrite to replace it (or choose another --name/--output_dir)")
        if is_main:
            _clear(d, named)
            log.warning("--overwrite: removed the earlier run in %s", d)


def _remove_leftovers(d: Path, named: bool) -> None:
    """Temporaries of interrupted writes and the remains of an interrupted ``--overwrite``."""
    removed = remove_stale_temps(d)
    if removed:
        log.warning("removed %d temporary file(s) of interrupted writes in %s (%s)", len(removed), d,
                    ", ".join(str(p.relative_to(d)) for p in removed[:3]) + (" ..." if len(removed) > 3 else ""))
    trash_parent, prefix = (d.parent, f".{d.name}{_TRASH}") if named else (d, _TRASH)
    if trash_parent.is_dir():
        for p in trash_parent.iterdir():
            if p.name.startswith(prefix) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)


def _clear(d: Path, named: bool) -> None:
    """Move the earlier run out of the way (one rename for a named run), then delete it: a kill
    in between leaves a hidden folder that the next start removes, never half a run."""
    token = secrets.token_hex(4)
    if named:
        trash = d.parent / f".{d.name}{_TRASH}{token}"
        os.replace(d, trash)
        d.mkdir()
        for name in _CACHES:
            if (trash / name).exists():
                os.replace(trash / name, d / name)
    else:
        trash = d / f"{_TRASH}{token}"
        trash.mkdir()
        entries = sorted({p for pattern in _RUN_OUTPUTS for p in d.glob(pattern)})
        # the markers last: an interrupted clear still shows a run, and is refused or cleared again
        entries.sort(key=lambda p: p.name in RUN_MARKERS)
        for p in entries:
            os.replace(p, trash / p.name)
    shutil.rmtree(trash, ignore_errors=True)
