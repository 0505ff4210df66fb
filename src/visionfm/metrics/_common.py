"""Small helpers shared by the metric modules (array conversion, undefined values, JSON cleaning).

Every metric in :mod:`visionfm.metrics` follows one rule for values that cannot be computed (an
AUROC for a class absent from the ground truth, an R² for a constant target, ...): the value is
``None``, the reason goes into the result's ``"undefined"`` dict under the same key, and a macro
mean is taken over the defined values only, with the count written next to it. Nothing crashes and
no NaN ever enters a mean silently.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["as_numpy", "Undefined", "mean_defined", "to_jsonable", "default_names", "finite_or_none"]


def as_numpy(x: Any, *, name: str = "array", dtype: Any = None) -> np.ndarray:
    """Convert a numpy array, torch tensor, list or scalar into a numpy array (one copy at most).

    Torch tensors are detached and moved to the CPU first, so GPU outputs can be passed directly.
    """
    if x is None:
        raise ValueError(f"{name} is None; expected an array or tensor")
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch here
        x = x.detach().cpu()
        if str(x.dtype) in {"torch.bfloat16", "torch.float16"}:
            x = x.float()
        x = x.numpy()
    arr = np.asarray(x)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return arr


def finite_or_none(x: Any) -> float | None:
    """A Python float, or ``None`` when ``x`` is ``None``, NaN or infinite."""
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


class Undefined:
    """Collects ``key -> reason`` for every metric value reported as ``None``."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}

    def check(self, key: str, value: Any, reason: str) -> float | None:
        """Return ``value`` as a float, or record ``reason`` under ``key`` and return ``None``.

        ``value`` counts as undefined when it is ``None`` or not finite.
        """
        v = finite_or_none(value)
        if v is None:
            self.reasons[key] = reason
        return v

    def add(self, key: str, reason: str) -> None:
        self.reasons[key] = reason


def mean_defined(values: Iterable[float | None]) -> tuple[float | None, int, int]:
    """Mean over the defined (non-``None``, finite) values.

    Returns:
        ``(mean or None, n_defined, n_total)``.
    """
    vals = list(values)
    ok = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
    mean = float(np.mean(ok)) if ok else None
    return mean, len(ok), len(vals)


def weighted_mean_defined(values: Sequence[float | None], weights: Sequence[float]) -> float | None:
    """Weighted mean over defined values; ``None`` when no defined value has positive weight."""
    num = 0.0
    den = 0.0
    for v, w in zip(values, weights):
        if v is None or not math.isfinite(float(v)):
            continue
        num += float(v) * float(w)
        den += float(w)
    return num / den if den > 0 else None


def default_names(names: Sequence[str] | None, n: int, prefix: str, what: str) -> list[str]:
    """Validate user-given names (length ``n``, unique) or make ``"<prefix> <i>"`` names."""
    if names is None:
        return [f"{prefix} {i}" for i in range(n)]
    out = [str(s) for s in names]
    if len(out) != n:
        raise ValueError(f"{what} has {len(out)} entries ({out!r}) but the data has {n}")
    if len(set(out)) != len(out):
        dupes = sorted({s for s in out if out.count(s) > 1})
        raise ValueError(f"{what} must be unique; repeated: {dupes!r}")
    return out


def to_jsonable(obj: Any) -> Any:
    """Recursively turn numpy/torch values into plain Python; NaN and ±inf become ``None``.

    The result can be written with ``json.dumps(..., allow_nan=False)``.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite_or_none(obj)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):
        return to_jsonable(as_numpy(obj))
    if obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"cannot convert {type(obj).__name__} to JSON")
