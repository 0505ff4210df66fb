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
* :attr:`Task.names_key` — the ``config.json`` key listing the output names;
* :attr:`Task.needs_days` — whether the model takes a horizon in days (then ``config.json``'s
  ``max_days`` bounds it);
* :meth:`Task.validate_config` — the ``features`` section and the task's own ``config.json`` keys
  (the generic keys — format version, encoder, preprocessing, head — are checked by
  :func:`visionfm.packaging.validate_config` before);
* :meth:`Task.output_names` — names of the outputs (classes, targets, landmarks);
* :meth:`Task.forward` — head outputs from the head input (and ``days`` for forecasting);
* :meth:`Task.postprocess` — raw outputs → predictions (numpy), shared by evaluate, predict, serve;
* :meth:`Task.record` — one image's JSON-ready prediction record (``predict`` and the web app);
* :meth:`Task.save_outputs` — per-image files of ``predict`` (masks, overlays);
* :meth:`Task.display_names` — output names as the web app lists them, with their units;
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
    #: the ``config.json`` key that lists the output names (``class_names``, ``target_names``, ...).
    names_key: str = "class_names"
    #: the validation metric that selects the checkpoint, and its direction.
    selection_key: str = "loss"
    higher_is_better: bool = False
    #: whether the model needs a horizon ``days`` per image at prediction time (forecasting); its range is
    #: ``[0, config["max_days"]]``, and the task's :meth:`validate_config` checks that ``max_days`` is there.
    needs_days: bool = False

    # -- model folders ------------------------------------------------------------------------------
    def validate_config(self, cfg: Mapping[str, Any], bad: Callable[[str], Exception]) -> None:
        """Raise ``bad(message)`` when the ``features`` section does not fit :attr:`features`, or the task's
        own ``config.json`` keys are missing or malformed. Subclasses with keys of their own extend this
        (``super().validate_config(cfg, bad)`` first). ``cfg["features"]`` is known to be a dict."""
        feats = cfg["features"]
        ftype = feats.get("type")
        if self.features == "dense":
            ids = feats.get("block_ids")
            four_ints = isinstance(ids, list) and len(ids) == 4 and all(isinstance(i, int) for i in ids)
            if ftype != "dense" or not four_ints:
                raise bad(f"task {self.name} needs features {{'type': 'dense', 'block_ids': [4 ints]}}, got {feats!r}")
            return
        if ftype != "pooled":
            raise bad(f"task {self.name} needs features of type 'pooled', got {ftype!r}")
        avg = feats.get("avgpool", 0)
        if avg not in (0, 1, 2):
            raise bad(f"features avgpool must be 0, 1 or 2, got {avg!r}")
        n = feats.get("n_last_blocks", 1)
        if avg != 1 and not (isinstance(n, int) and n >= 1):
            raise bad(f"features n_last_blocks must be a positive integer, got {n!r}")

    def output_names(self, cfg: Mapping[str, Any]) -> list[Any]:
        """Names of the outputs (classes, targets, landmarks) for records, cards and the web app: the list
        under :attr:`names_key`, as written in ``config.json``."""
        return list(cfg.get(self.names_key) or [])

    def forward(self, head: nn.Module, x: Any, images: torch.Tensor, cfg: Mapping[str, Any],
                days: torch.Tensor | None = None) -> torch.Tensor:
        """Raw head outputs from the head input ``x`` (see :attr:`features`)."""
        return head(x, images) if self.features == "dense" else head(x)

    def postprocess(self, cfg: Mapping[str, Any], outputs: torch.Tensor,
                    sizes: Sequence[tuple[int, int]]) -> dict[str, Any]:
        """Raw outputs (float, CPU) → predictions; ``sizes`` are the images' original ``(h, w)``."""
        return {"outputs": outputs.numpy()}

    def record(self, cfg: Mapping[str, Any], pred: Mapping[str, Any], i: int, names: Sequence[str]) -> dict[str, Any]:
        """Image ``i``'s prediction as JSON-ready fields (merged into ``{"image", "height", "width"[, "days"]}``);
        ``names`` are :meth:`output_names`."""
        return {"outputs": np.asarray(pred["outputs"][i]).tolist()}

    def save_outputs(self, cfg: Mapping[str, Any], pred: Mapping[str, Any], i: int, image: Any, folder: Any,
                     key: str, title: str, overlays: bool) -> dict[str, str]:
        """Write image ``i``'s files under ``folder`` (a :class:`~pathlib.Path`): ``image`` is the input (PIL),
        ``key`` the file stem to use, ``title`` the input's name, ``overlays`` whether overlay pictures are
        wanted. Returns ``{record field: path relative to folder, as posix}``, added to the record."""
        return {}

    def display_names(self, cfg: Mapping[str, Any]) -> tuple[list[str], list[str | None] | None]:
        """``(names, units)`` the web app lists for the outputs; ``units`` is ``None`` when the task's outputs
        have no units (then the model list shows none)."""
        return [str(n) for n in self.output_names(cfg)], None

    def display(self, cfg: Mapping[str, Any], record: Mapping[str, Any], pred: Mapping[str, Any],
                names: Sequence[str], units: Sequence[str | None]) -> Display:
        """What the web app shows for a one-image prediction ``pred`` (a batch of one) and its ``record``;
        ``names`` and ``units`` are those of :meth:`display_names` (units ``None`` when there are none)."""
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


def task_names(needs_days: bool | None = None) -> list[str]:
    """Every task name that :func:`get_task` accepts: built-in modules, registered classes, plug-ins
    (only those whose :attr:`Task.needs_days` is ``needs_days``, when given)."""
    import pkgutil

    package = importlib.import_module(TASK_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            try:
                _import_builtin(info.name)
            except ImportError as exc:  # one module missing an optional dependency must not hide the others
                log.warning("task module %s.%s could not be imported (%s)", TASK_PACKAGE, info.name, exc)
    _load_plugins()
    return sorted(n for n, t in _REGISTRY.items() if needs_days is None or t.needs_days == needs_days)


def registered_tasks() -> dict[str, Task]:
    """The tasks registered so far (name → instance)."""
    return dict(_REGISTRY)
