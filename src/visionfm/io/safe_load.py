"""Loading checkpoint files without ever running code from them.

Only ``torch.load(..., weights_only=True)`` is used. The restricted unpickler is widened by exactly
the few classes that official VisionFM / DINO / iBOT / RETFound training files contain besides
tensors: ``argparse.Namespace`` (the ``args`` entry) and numpy arrays, dtypes and scalars (metric values
such as ``best_f1``, saved ``np.ndarray`` statistics), numeric dtypes only — the same numpy allow-list as
:mod:`visionfm.io.restricted_pickle`. Anything else, e.g. a file crafted to call ``os.system`` on
unpickling, is refused with :class:`~visionfm.errors.UnsafeCheckpointError` before its payload can run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

from visionfm.errors import CheckpointError, UnsafeCheckpointError

__all__ = ["load_checkpoint_file", "file_sha256", "SAFE_GLOBALS", "is_safetensors_file"]


def _numpy_globals() -> list[tuple[Any, str]]:
    """``(object, "module.name")`` for every numpy global of :data:`~visionfm.io.restricted_pickle.ALLOWED_GLOBALS`
    (arrays, dtypes, the numeric dtype classes, scalars), under both the numpy 1 (``numpy.core``) and the
    numpy 2 (``numpy._core``) spelling, whichever numpy is installed. The pairs make torch's ``weights_only``
    unpickler resolve exactly these names; a name missing from this numpy is left out (and so refused)."""
    import importlib

    from visionfm.io.restricted_pickle import ALLOWED_GLOBALS

    found: list[tuple[Any, str]] = []
    for module, names in ALLOWED_GLOBALS.items():
        if module != "numpy" and not module.startswith("numpy."):
            continue
        homes = [module]
        if module.startswith(("numpy.core.", "numpy._core.")):  # prefer numpy 2's home (no deprecation warning)
            tail = module.split(".", 2)[2]
            homes = [f"numpy._core.{tail}", f"numpy.core.{tail}"]
        for name in sorted(names):
            for home in homes:
                try:
                    obj = getattr(importlib.import_module(home), name)
                except (ImportError, AttributeError):
                    continue
                found.append((obj, f"{module}.{name}"))
                break
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
            with warnings.catch_warnings():  # torch warns about pickle protocols before refusing a file
                warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
                return torch.load(p, map_location="cpu", weights_only=True), {}
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        # an unadmitted global, or an object of an unadmitted type to be built (e.g. numpy's ObjectDType)
        match = re.search(r"GLOBAL ([\w.]+)", msg) or re.search(r"but got <class '([\w.]+)'>", msg)
        if match is None:
            raise CheckpointError(
                f"{p}: not a readable PyTorch checkpoint (corrupt or not a torch.save file)"
            ) from None
        raise UnsafeCheckpointError(
            f"{p}: refused to load — unpickling it would need {match.group(1)}, which could run arbitrary code. "
            "visionfm only loads tensors, argparse.Namespace and numeric numpy arrays and scalars. "
            "If you trust this file, re-save its state dict with torch.save(state_dict) or convert it to .safetensors."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint ({type(exc).__name__}: {_first_sentence(exc)})"
                              ) from None
    except (KeyError, IndexError, TypeError, AttributeError, struct.error, MemoryError) as exc:
        # Text or other bytes that are not a torch.save file trip the legacy unpickler in arbitrary places
        # (a text file gives ``KeyError: 101``, its first byte 'e' read as a memo index).
        raise CheckpointError(
            f"{p}: not a readable PyTorch checkpoint (not a torch.save file: {type(exc).__name__} while "
            "unpickling); expected a .pth/.pt file written by torch.save, or a .safetensors file"
        ) from None


def _first_sentence(exc: BaseException) -> str:
    """The first line / sentence of an exception message (torch's zip errors run over several)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    head, dot, _ = text.partition(". ")
    return head + ("." if dot else "")


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
