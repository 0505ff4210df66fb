"""Reading plain pickles of builtin containers and numpy arrays without running code from them.

The original's ``extract_features.py`` wrote one ``pickle.dump`` per image (reference §2.9): a dict
of strings, a list of ints, numpy ``float32`` arrays and a numpy label array. Unpickling such a file
needs only a handful of globals — the builtin types and numpy's array, dtype and scalar
reconstructors. :class:`RestrictedUnpickler` resolves exactly those; every other global (for example
``posix.system`` in a booby-trapped file) is refused with :class:`UnsafePickleError` *before* it is
imported or called, so its payload never runs.

This is separate from :mod:`visionfm.io.safe_load`, which reads ``torch.save`` checkpoints through
torch's own ``weights_only`` unpickler.
"""

from __future__ import annotations

import builtins
import importlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

from visionfm.errors import DataFormatError

__all__ = ["RestrictedUnpickler", "UnsafePickleError", "load_restricted_pickle", "ALLOWED_GLOBALS"]


class UnsafePickleError(DataFormatError):
    """A pickle would need a global outside the allow-list; it was refused before anything ran."""


_BUILTIN_TYPES = frozenset({"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float",
                            "complex", "bool"})
# numeric and boolean dtype classes of numpy.dtypes (no object, string or void dtypes)
_DTYPE_CLASSES = frozenset({
    "BoolDType", "Int8DType", "Int16DType", "Int32DType", "Int64DType", "UInt8DType", "UInt16DType", "UInt32DType",
    "UInt64DType", "ByteDType", "UByteDType", "ShortDType", "UShortDType", "IntDType", "UIntDType", "LongDType",
    "ULongDType", "LongLongDType", "ULongLongDType", "Float16DType", "Float32DType", "Float64DType",
    "LongDoubleDType", "Complex64DType", "Complex128DType", "CLongDoubleDType",
})
# numpy-internal reconstructors; numpy 1 writes numpy.core.*, numpy 2 numpy._core.*
_NUMPY_INTERNAL = {"multiarray": frozenset({"_reconstruct", "scalar"}), "numeric": frozenset({"_frombuffer"})}

#: ``module -> names`` admitted (``__builtin__`` is the protocol 0–2 spelling of ``builtins``).
ALLOWED_GLOBALS: dict[str, frozenset[str]] = {
    "builtins": _BUILTIN_TYPES,
    "__builtin__": _BUILTIN_TYPES,
    "_codecs": frozenset({"encode"}),  # protocols 0-2 write bytes as _codecs.encode(text, "latin1")
    "numpy": frozenset({"ndarray", "dtype"}),
    "numpy.dtypes": _DTYPE_CLASSES,
    **{f"numpy.{core}.{mod}": names for core in ("core", "_core") for mod, names in _NUMPY_INTERNAL.items()},
}


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` limited to the ``latin1`` use that pickle protocols 0–2 make of it."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591") or not isinstance(obj, str):
        raise pickle.UnpicklingError(f"_codecs.encode is admitted only for str -> latin1 (got {encoding!r})")
    return obj.encode("latin1", errors)


def _numpy_internal(module: str, name: str) -> Any:
    tail = module.split(".", 2)[2]  # multiarray / numeric
    for candidate in (f"numpy._core.{tail}", f"numpy.core.{tail}"):  # prefer numpy 2's home (no warning)
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"this numpy has no {module}.{name}")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose :meth:`find_class` admits only :data:`ALLOWED_GLOBALS`.

    ``source`` names the file in error messages. Persistent ids are refused (the default).
    """

    def __init__(self, file: Any, *, source: object = "<pickle>",
                 extra_globals: dict[str, frozenset[str]] | None = None) -> None:
        super().__init__(file)
        self.source = source
        # a caller's own data classes (e.g. torch.distributed.checkpoint's metadata), on top of the builtins
        self.extra = extra_globals or {}

    def find_class(self, module: str, name: str) -> Any:
        if name in self.extra.get(module, ()):
            return getattr(importlib.import_module(module), name)
        if name not in ALLOWED_GLOBALS.get(module, ()):
            raise UnsafePickleError(
                f"refused to unpickle: it needs {module}.{name}, which could run arbitrary code; only builtin "
                "containers and numpy arrays are admitted", self.source)
        if module in ("builtins", "__builtin__"):
            return getattr(builtins, name)
        if module == "_codecs":
            return _latin1_encode
        if module.startswith(("numpy.core.", "numpy._core.")):
            return _numpy_internal(module, name)
        return getattr(importlib.import_module(module), name)


def load_restricted_pickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`.

    Raises:
        UnsafePickleError: the file needs a global outside the allow-list (named in the message).
        DataFormatError: the file is missing, truncated or not a pickle.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise DataFormatError(f"cannot read the file ({exc.strerror or exc})", p) from None
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=p).load()
    except DataFormatError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, TypeError ... from malformed bytes
        raise DataFormatError(f"not a readable pickle ({type(exc).__name__}: {exc})", p) from None
