"""Finiteness of tensors: a device-side flag for training loops, and the guard of every weights writer.

:func:`all_finite` answers "is every value finite?" for many tensors with one fused max-|x| per
(device, dtype) group and no host read, so a training step can fold it into its skip flag.
:func:`require_finite` is what :func:`~visionfm.io.atomic.save_torch_atomic` and
:func:`~visionfm.io.atomic.save_safetensors_atomic` call before they create anything: a state
holding NaN or inf is refused with one line naming the file and the first bad tensor, and the file
already at that path (the last good checkpoint) stays as it was.
"""

from __future__ import annotations

import argparse
from typing import Any, Iterable, Iterator

import torch

from visionfm.errors import NonFiniteLossError

__all__ = ["all_finite", "nonfinite_tensors", "require_finite"]


def _checked(t: Any) -> bool:
    return torch.is_tensor(t) and (t.is_floating_point() or t.is_complex()) and t.numel() > 0


def all_finite(tensors: Iterable[torch.Tensor | None]) -> torch.Tensor:
    """A 0-d bool tensor: whether every floating-point value of ``tensors`` is finite (``None`` entries
    and integer tensors are ignored). No host synchronisation; the flag lives on the first tensor's
    device (the CPU when there is none)."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        if t is not None and _checked(t):
            groups.setdefault((t.device, t.dtype), []).append(t.detach())
    out: torch.Tensor | None = None
    for ts in groups.values():
        # max |x| is NaN or inf exactly when some value is (a sum of squares could overflow)
        flag = torch.isfinite(torch.stack(torch._foreach_norm(ts, float("inf")))).all()
        out = flag if out is None else out & flag.to(out.device)
    return torch.ones((), dtype=torch.bool) if out is None else out


def _walk(obj: Any, key: str) -> Iterator[tuple[str, torch.Tensor]]:
    if torch.is_tensor(obj):
        yield key, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{key}[{i}]")
    elif isinstance(obj, argparse.Namespace):
        yield from _walk(vars(obj), key)


def nonfinite_tensors(obj: Any) -> list[tuple[str, int]]:
    """``(key, number of non-finite values)`` of every tensor in ``obj`` (nested dicts, lists, tuples,
    ``argparse.Namespace``) holding NaN or inf; keys are dotted paths. Empty when all are finite."""
    tensors = [(k, t) for k, t in _walk(obj, "") if _checked(t)]
    if not tensors or bool(all_finite(t for _, t in tensors)):
        return []
    bad = []
    for k, t in tensors:
        n = int((~torch.isfinite(t.detach())).sum())
        if n:
            bad.append((k, n))
    return bad


def require_finite(obj: Any, path: Any) -> None:
    """Raise :class:`~visionfm.errors.NonFiniteLossError` (one line, naming ``path`` and the first bad
    tensor) when ``obj`` holds a non-finite value; nothing is written by the caller then."""
    bad = nonfinite_tensors(obj)
    if bad:
        total = sum(n for _, n in bad)
        raise NonFiniteLossError(
            f"{path}: not written: {total} non-finite value(s) in {len(bad)} tensor(s) (first: {bad[0][0]}); "
            "the training diverged (lower --lr, set --clip_grad); what is already there is kept unchanged"
        )
