"""Atomic writes: a temporary file in the destination folder, fsync, then ``os.replace``.

A crash or a full disk therefore leaves either the previous file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

__all__ = ["atomic_path", "atomic_dir", "save_torch_atomic", "save_safetensors_atomic", "save_json_atomic",
           "save_text_atomic", "remove_stale_temps", "replace_dir"]

# the temporaries of atomic_path: ``.<file name>.<8 random characters of mkstemp>.tmp``
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        # mkstemp creates 0600, and a writer may replace the temporary with a new 0600 file (safetensors
        # does): give the final file the usual permissions (0666 minus the umask) after the write.
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; filled without error, it replaces ``path``
    (:func:`replace_dir`) with the usual folder permissions, otherwise it is removed: ``path`` is always
    the old folder or the complete new one, never half of one."""
    import shutil

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Put the finished folder ``tmp`` at ``dest`` with renames only: an old ``dest`` is first renamed
    aside (``.<name>.old-<pid>``), then removed, so ``dest`` is always either the old folder or the new."""
    import shutil

    tmp, dest = Path(tmp), Path(dest)
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        if old.exists():  # left by an earlier process of the same pid that was killed in between
            shutil.rmtree(old)
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def save_torch_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` atomically; a state holding a non-finite tensor is refused before anything is
    written (:func:`visionfm.io.finite.require_finite`), so the file already there stays."""
    import torch

    from visionfm.io.finite import require_finite

    require_finite(obj, path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_safetensors_atomic(
    tensors: Mapping[str, Any], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> Path:
    """Safetensors atomically; non-finite tensors are refused before anything is written, as above."""
    from safetensors.torch import save_file

    from visionfm.io.finite import require_finite

    require_finite(tensors, path)
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=dict(metadata) if metadata else None)
    return Path(path)


def save_json_atomic(obj: Any, path: str | os.PathLike[str], indent: int = 2) -> Path:
    return save_text_atomic(json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n", path)


def save_text_atomic(text: str, path: str | os.PathLike[str]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporaries that interrupted :func:`atomic_path` writes (a kill, a power cut) left in
    ``folder`` and its subfolders; returns what was removed.

    Call it when a run starts in its own run folder, where no other write can be in progress. Only
    plain files named as :func:`atomic_path` names its temporaries are touched; links are not followed.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    removed: list[Path] = []
    for dirpath, _dirnames, filenames in os.walk(root):  # os.walk does not descend into linked folders
        for name in filenames:
            p = Path(dirpath) / name
            if _TEMP_NAME.match(name) and p.is_file() and not p.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    return removed
