"""Decoder heads trained on frozen encoder features, and the one head registry.

Heads are built by name: ``get_head_constructor(name)(**args)`` — training commands, model folders
(``config["head"] = {"type": name, "args": {...}}``) and :func:`build_cls_head` all go through
:data:`HEADS`. An entry is a class/callable or a lazy ``"module:Class"`` string, so a new head
registers itself with one line (:func:`register_head`).
"""

from __future__ import annotations

import importlib
from typing import Callable

from torch import nn

from visionfm.errors import ConfigError
from visionfm.models.heads.cls import ClsHead, LinearHead

__all__ = ["ClsHead", "LinearHead", "HEADS", "register_head", "get_head_constructor", "build_head", "build_cls_head"]

HEADS: dict[str, Callable[..., nn.Module] | str] = {
    "cls": "visionfm.models.heads.cls:ClsHead",
    "linear": "visionfm.models.heads.cls:LinearHead",
    "reg": "visionfm.models.heads.reg:RegHead",
    "unetr": "visionfm.models.heads.unetr:UnetrHead",
    "linear_seg": "visionfm.models.heads.linear_seg:LinearSegHead",
    "forecast": "visionfm.models.heads.forecast:ForecastHead",
    "forecast_std": "visionfm.models.heads.forecast:StandardizedForecastHead",
}


def register_head(name: str, constructor: Callable[..., nn.Module] | str) -> None:
    """Make ``config["head"]["type"] == name`` build ``constructor(**config["head"]["args"])``.

    ``constructor`` is a class/callable or a lazy ``"package.module:Class"`` string. What a head is called
    with is up to the task (:meth:`visionfm.engine.task.Task.forward`): pooled features ``[B, E]``
    (``classification``/``regression``), ``(list of 4 patch-token tensors [B, P, D], normalised image)``
    (``segmentation``/``landmark``), ``(pooled features [B, E], days [B])`` (``forecasting``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError("a head name must be a non-empty string")
    HEADS[name] = constructor


def get_head_constructor(name: str) -> Callable[..., nn.Module]:
    if name not in HEADS:
        raise ConfigError(f"unknown head type {name!r}; registered heads: {', '.join(sorted(HEADS))}")
    entry = HEADS[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        try:
            entry = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"head type {name!r} needs {module}.{attr}, which is not available ({exc})") from None
        HEADS[name] = entry
    return entry


def build_head(name: str, **args: object) -> nn.Module:
    """The registered head ``name`` built from keyword arguments."""
    return get_head_constructor(name)(**args)


def build_cls_head(kind: str, embed_dim: int, num_classes: int, layers: int = 3, bn_momentum: float = 0.1) -> nn.Module:
    """``kind="cls"`` → :class:`ClsHead` (``layers``, ``bn_momentum``), ``"linear"`` → :class:`LinearHead`."""
    if kind == "cls":
        return build_head("cls", embed_dim=embed_dim, num_classes=num_classes, layers=layers, bn_momentum=bn_momentum)
    if kind == "linear":
        return build_head("linear", embed_dim=embed_dim, num_classes=num_classes)
    raise ValueError(f"unknown head {kind!r}; expected 'cls' or 'linear'")
