"""Loading checkpoint files without ever running code from them.

Only ``torch.load(..., weights_only=True)`` is used. The restricted unpickler is widened by exactly
the few classes that official VisionFM / DINO / iBOT / RETFound training files contain besides
tensors: ``argparse.Namespace`` (the ``args`` entry) and numpy scalars/dtypes (metric values such as
``best_f1``). Anything else, e.g. a file crafted to call ``os.system`` on unpickling, is refused with
:class:`~visionfm.errors.UnsafeCheckpointError` before its payload can run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

from visionfm.errors import CheckpointError, UnsafeCheckpointError

__all__ = ["load_checkpoint_file", "file_sha256", "SAFE_GLOBALS", "is_safetensors_file"]


def _numpy_globals() -> list[Any]:
    import numpy as np

    found: list[Any] = [np.dtype]
    for mod_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            mod = __import__(mod_name, fromlist=["scalar"])
            found.append(mod.scalar)
            break
        except (ImportError, AttributeError):
            continue
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        cls = getattr(getattr(np, "dtypes", None), name, None)
        if cls is not None:
            found.append(cls)
    return found


SAFE_GLOBALS: list[Any] = [argparse.Namespace]


def is_safetensors_file(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    # safetensors: 8-byte little-endian header length, then a JSON object.
    return len(head) == 9 and head[8:9] == b"{" and not zipfile.is_zipfile(path)


def load_checkpoint_file(path: str | os.PathLike[str]) -> tuple[Any, dict[str, str]]:
    """Read a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file safely.

    Returns:
        ``(content, metadata)``: the unpickled object (tensors on CPU) and, for safetensors, the
        header metadata (empty otherwise).

    Raises:
        CheckpointError: missing or unreadable file.
        UnsafeCheckpointError: the file needs globals outside the allow-list.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"weights file not found: {p}")
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder; expected a weights file (.pth/.pt/.safetensors)")
    if is_safetensors_file(p):
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt", device="cpu") as fh:
                meta = dict(fh.metadata() or {})
                return {k: fh.get_tensor(k) for k in fh.keys()}, meta
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{p}: not a readable safetensors file ({exc})") from exc
    import torch

    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS + _numpy_globals()):
            return torch.load(p, map_location="cpu", weights_only=True), {}
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        match = re.search(r"GLOBAL ([\w.]+)", msg)
        if match is None:
            raise CheckpointError(
                f"{p}: not a readable PyTorch checkpoint (corrupt or not a torch.save file)"
            ) from None
        raise UnsafeCheckpointError(
            f"{p}: refused to load — unpickling it would need {match.group(1)}, which could run arbitrary code. "
            "visionfm only loads tensors, argparse.Namespace and numpy scalars. If you trust this file, "
            "re-save its state dict with torch.save(state_dict) or convert it to .safetensors."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
