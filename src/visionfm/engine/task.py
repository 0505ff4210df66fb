"""The task plug-in interface and its registry (design §2.6).

A task (classification, regression, segmentation, landmark, forecasting, ...) is one class in one
module under :mod:`visionfm.tasks`. It declares what differs between tasks; everything that is the
same for all of them — the training loop (:mod:`visionfm.engine.trainer`), model folders
(:mod:`visionfm.packaging`), ``predict`` (:mod:`visionfm.inference`), the web app and the reports —
asks this registry by the task's name and contains no per-task branches.

The registry lives here, below :mod:`visionfm.tasks`, so that packaging and inference can look a
task up without importing the layer above them: :func:`get_task` imports ``visionfm.tasks.<name>``
on first use (the module registers its class with :func:`register_task`), then any installed
plug-in registered under the ``visionfm.tasks`` entry-point group. A new built-in task is therefore
one module, ``visionfm/tasks/<name>.py``, named after its task; nothing here lists it.

What a task declares for a packaged model (``config.json`` → predictions):

* :attr:`Task.features` — ``"pooled"`` (a vector per image from CLS / mean patch tokens) or
  ``"dense"`` (patch tokens of four blocks plus the normalised image);
* :meth:`Task.validate_config` — the task's own ``config.json`` keys;
* :meth:`Task.forward` — head outputs from the head input (and ``days`` for forecasting);
* :meth:`Task.postprocess` — raw outputs → predictions (numpy), shared by evaluate, predict, serve;
* :meth:`Task.record` — one image's JSON-ready prediction record (``predict`` and the web app);
* :meth:`Task.save_outputs` — per-image files of ``predict`` (masks, overlays);
* :meth:`Task.display` — what the web app draws: summary items, a mask, points;
* :meth:`Task.card_task_line` — the model card's one-line task description.

What a task declares for training: :attr:`Task.selection_key` and :attr:`Task.higher_is_better`
(model selection in :func:`visionfm.engine.trainer.fit`).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np
import torch
from torch import nn

from visionfm.errors import ConfigError

__all__ = ["Task", "Display", "register_task", "get_task", "task_names", "registered_tasks"]

log = logging.getLogger("visionfm.task")

T = TypeVar("T", bound=type)

TASK_PACKAGE = "visionfm.tasks"  # built-in task ``x`` is the module ``visionfm.tasks.x``
ENTRY_POINT_GROUP = "visionfm.tasks"

_REGISTRY: dict[str, Task] = {}


@dataclass
class Display:
    """What the web app shows for one image (drawing is the web app's job, not the task's).

    Attributes:
        summary: JSON-ready result entries keyed by the section name the page knows
            (``classes``, ``values``, ``segmentation``, ``landmarks``, or a task's own key, shown as a table).
        mask: class ids ``[h, w]`` at the image's original size, or ``None``.
        n_classes: number of mask classes (colours), background included.
        points: ``(x, y)`` in original pixels, drawn as crosses.
    """

    summary: dict[str, Any] = field(default_factory=dict)
    mask: np.ndarray | None = None
    n_classes: int = 2
    points: list[tuple[float, float]] = field(default_factory=list)


class Task:
    """Base class of the task plug-ins; subclasses override what differs (see the module docstring)."""

    #: registry key, also ``config.json``'s ``task``.
    name: str = ""
    #: head input: ``"pooled"`` ``[B, E]`` or ``"dense"`` (list of 4 patch-token tensors ``[B, P, D]`` + image).
    features: str = "pooled"
    #: the validation metric that selects the checkpoint, and its direction.
    selection_key: str = "loss"
    higher_is_better: bool = False
    #: extra per-image input the model needs at prediction time (``"days"`` for forecasting).
    needs_days: bool = False

    # -- model folders ------------------------------------------------------------------------------
    def validate_config(self, cfg: Mapping[str, Any], bad: Callable[[str], Exception]) -> None:
        """Raise ``bad(message)`` when the task's own ``config.json`` keys are missing or malformed."""

    def output_names(self, cfg: Mapping[str, Any]) -> list[str]:
        """Names of the outputs (classes, targets, landmarks) for records, cards and the web app."""
        return [str(n) for n in (cfg.get("class_names") or [])]

    def forward(self, head: nn.Module, x: Any, images: torch.Tensor, cfg: Mapping[str, Any],
                days: torch.Tensor | None = None) -> torch.Tensor:
        """Raw head outputs from the head input ``x`` (see :attr:`features`)."""
        return head(x, images) if self.features == "dense" else head(x)

    def postprocess(self, cfg: Mapping[str, Any], outputs: torch.Tensor,
                    sizes: Sequence[tuple[int, int]]) -> dict[str, Any]:
        """Raw outputs (float, CPU) → predictions; ``sizes`` are the images' original ``(h, w)``."""
        return {"outputs": outputs.numpy()}

    def record(self, cfg: Mapping[str, Any], pred: Mapping[str, Any], i: int, names: Sequence[str]) -> dict[str, Any]:
        """Image ``i``'s prediction as JSON-ready fields (merged into ``{"image", "height", "width"}``)."""
        return {"outputs": np.asarray(pred["outputs"][i]).tolist()}

    def save_outputs(self, cfg: Mapping[str, Any], pred: Mapping[str, Any], i: int, image: Any, folder: Any,
                     key: str, title: str, overlays: bool) -> dict[str, str]:
        """Write image ``i``'s files under ``folder``; returns ``{record field: path relative to folder}``."""
        return {}

    def display(self, cfg: Mapping[str, Any], record: Mapping[str, Any], pred: Mapping[str, Any],
                names: Sequence[str], units: Sequence[str | None]) -> Display:
        """What the web app shows for a one-image prediction ``pred`` and its ``record``."""
        return Display()

    def card_task_line(self, cfg: Mapping[str, Any]) -> str:
        """One line for the model card: what the model predicts."""
        return self.name


def register_task(cls: T) -> T:
    """Class decorator: register ``cls()`` under ``cls.name`` (a later registration replaces it)."""
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"task class {cls.__name__} needs a non-empty 'name'")
    _REGISTRY[name] = cls()
    return cls


def _load_plugins() -> None:
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name not in _REGISTRY:
                try:
                    ep.load()
                except Exception as exc:  # a broken plug-in must not break the built-in tasks
                    log.warning("task plug-in %s could not be loaded (%s)", ep.name, exc)
    except Exception:  # pragma: no cover - importlib.metadata always exists on 3.10+
        pass


def _import_builtin(module: str) -> None:
    try:
        importlib.import_module(f"{TASK_PACKAGE}.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{TASK_PACKAGE}.{module}":  # the module exists but needs something missing
            raise


def get_task(name: str) -> Task:
    """The registered task ``name`` (importing its built-in module or plug-in on first use)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a task name must be a non-empty string, got {name!r}")
    if name not in _REGISTRY and name.isidentifier():
        _import_builtin(name)
    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
    return _REGISTRY[name]


def task_names() -> list[str]:
    """Every task name that :func:`get_task` accepts: built-in modules, registered classes, plug-ins."""
    import pkgutil

    package = importlib.import_module(TASK_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            _import_builtin(info.name)
    _load_plugins()
    return sorted(_REGISTRY)


def registered_tasks() -> dict[str, Task]:
    """The tasks registered so far (name → instance)."""
    return dict(_REGISTRY)
