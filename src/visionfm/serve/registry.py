"""The models a ``visionfm serve`` instance offers: discovered once at start-up, addressed only by id.

A client never names a path: :class:`ModelRegistry` scans the ``--models`` folder (the folder itself, or
model folders up to three levels below it, e.g. ``<run>/model``), validates every ``config.json`` without
loading weights, and gives each model a stable id derived from its relative path. Weights are loaded on
first use, once per model (a per-model lock makes concurrent first requests wait for one load), and
cached for the life of the server.

A broken folder never stops the server: every candidate is checked cheaply when it is listed
(:func:`visionfm.packaging.model_folder.check_model_folder`: the config, the names against the head, the
weights file's header against the model, no tensor read), and one that fails — or that fails to load
later, at warm-up or on first use — is reported in :attr:`ModelRegistry.problems` (folder, message without
server paths) and in the server log, and is not served; every other model is.

When the folder holds no valid model, two in-memory demo models are offered (a ViT-Tiny classifier and a
ViT-Tiny + UNETR segmenter with fixed random weights), clearly named as demos: they let the page be tried
out and tested, and they predict nothing meaningful. Nothing is written to disk for them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from visionfm.engine.task import get_task
from visionfm.errors import ConfigError, VisionFMError
from visionfm.reports.units import split_unit
from visionfm.serve.redact import Redactor, error_id

__all__ = ["ModelEntry", "ModelRegistry", "UnknownModelError", "ModelUnavailableError", "DEMO_LABEL", "demo_models",
           "split_unit"]

log = logging.getLogger("visionfm.serve")

DEMO_LABEL = "demo model (synthetic data, not for clinical use)"
_MAX_DEPTH = 3


class UnknownModelError(VisionFMError, KeyError):
    """A model id that this server does not offer."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown model"


class ModelUnavailableError(VisionFMError):
    """A listed model that failed to load (it is then reported in ``problems`` and no longer offered)."""


@dataclass
class ModelEntry:
    """What the page and ``GET /api/models`` show about one model (no weights loaded).

    ``output_names`` / ``units`` are the task's :meth:`~visionfm.engine.task.Task.display_names`
    (``units`` all ``None`` and ``has_units`` false when the task's outputs have no units); ``config`` is
    the model's ``config.json``, which the task reads to display a result.
    """

    id: str
    name: str
    task: str
    task_kind: str | None
    modality: str
    output_names: list[str]
    units: list[str | None]
    arch: str
    input_size: int
    max_days: float | None = None
    demo: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = field(default=None, repr=False)
    factory: Callable[[], Any] | None = field(default=None, repr=False)
    has_units: bool = False
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    metrics_ci: dict[str, dict[str, float]] = field(default_factory=dict)
    selection: dict[str, Any] | None = None
    evaluated_on: str | None = None
    card: str | None = field(default=None, repr=False)

    @property
    def needs_days(self) -> bool:
        """Whether a prediction needs a horizon in days (then within ``[0, max_days]``)."""
        return get_task(self.task).needs_days

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "name": self.name, "task": self.task, "task_kind": self.task_kind,
            "modality": self.modality, "output_names": self.output_names, "arch": self.arch,
            "input_size": self.input_size, "demo": self.demo, "metrics": self.metrics,
            "metrics_ci": self.metrics_ci, "selection": self.selection, "evaluated_on": self.evaluated_on,
            "card": self.card,
        }
        if self.has_units:
            out["units"] = self.units
        if self.max_days is not None:
            out["max_days"] = self.max_days
        return out


_CARD_MAX_CHARS = 64_000  # a model card longer than this is cut (the page shows it as text)
_METRICS_MAX_BYTES = 4_000_000  # metrics.json is read for the confidence intervals only below this size
#: what the ``selection`` value of a classifier is (see ``selection_metrics``): its label and the key of the
#: same metric in the evaluation
_SELECTION_LABELS = {"multilabel": ("macro AUROC", "auroc_macro"), "visionfm13": ("macro AUROC", "auroc_macro"),
                     None: ("macro F1", "f1_macro")}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _read_card(folder: Path | None) -> str | None:
    """The model folder's ``README.md`` without its front matter (at most ``_CARD_MAX_CHARS``), or ``None``."""
    if folder is None:
        return None
    path = folder / "README.md"
    try:
        with open(path, "rb") as fh:
            text = fh.read(4 * _CARD_MAX_CHARS + 4).decode("utf-8", errors="replace")
    except OSError:
        return None
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end != -1:
            text = text[end + 4:]
    text = text.strip()
    if len(text) > _CARD_MAX_CHARS:
        text = text[:_CARD_MAX_CHARS].rstrip() + "\n\n(model card shortened)"
    return text or None


def _read_full_metrics(folder: Path | None) -> dict[str, Any]:
    """``metrics.json`` of a model folder (the whole evaluation, with ``ci`` and ``selection``), or ``{}``
    when it is missing, too large or unreadable (the scalar metrics in ``config.json`` are shown then)."""
    if folder is None:
        return {}
    path = folder / "metrics.json"
    try:
        if not path.is_file() or path.stat().st_size > _METRICS_MAX_BYTES:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.info("%s: not read (%s); its confidence intervals are not shown", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _metrics_view(cfg: dict[str, Any], folder: Path | None) -> dict[str, Any]:
    """``metrics`` (scalars), ``metrics_ci`` (``{key: {low, high, level}}`` for the metrics that have an
    interval), ``selection`` (the metric that chose the checkpoint: ``key``, ``label``, ``split``,
    ``value``, ``higher_is_better``, and ``metric``: the key of the same metric in ``metrics``, if there)
    and ``evaluated_on`` for the page."""
    metrics = {k: v for k, v in (cfg.get("metrics") or {}).items() if _finite(v)}
    full = _read_full_metrics(folder)
    ci: dict[str, dict[str, float]] = {}
    intervals = full.get("ci") if isinstance(full.get("ci"), dict) else {}
    for key, iv in intervals.items():
        if isinstance(iv, dict) and _finite(iv.get("low")) and _finite(iv.get("high")):
            ci[str(key)] = {"low": float(iv["low"]), "high": float(iv["high"]),
                            "level": float(iv["level"]) if _finite(iv.get("level")) else 0.95}
    task = get_task(str(cfg["task"]))
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    sel_full = full.get("selection") if isinstance(full.get("selection"), dict) else {}
    key = str(sel_full.get("key") or data.get("selection_key") or task.selection_key)
    label, metric = key, key
    if key == "selection":
        label, metric = _SELECTION_LABELS.get(cfg.get("task_kind"), _SELECTION_LABELS[None])
    value = sel_full.get("value")
    selection = {"key": key, "label": label, "metric": metric if metric in metrics else None,
                 "split": str(sel_full.get("split") or data.get("selection_split") or "val"),
                 "value": float(value) if _finite(value) else None,
                 "higher_is_better": bool(task.higher_is_better)}
    evaluated = data.get("evaluated_on")
    return {"metrics": metrics, "metrics_ci": ci, "selection": selection,
            "evaluated_on": str(evaluated) if evaluated else None}


def _entry_from_config(cfg: dict[str, Any], model_id: str, name: str, **extra: Any) -> ModelEntry:
    task = get_task(str(cfg["task"]))
    names, units = task.display_names(cfg)
    if not cfg.get(task.names_key) and task.name == "landmark":
        names = [f"landmark {k + 1}" for k in range(len(names))]  # no names recorded: numbered from 1
    folder = extra.get("folder")
    view = _metrics_view(cfg, folder) if folder is not None else {"metrics": {
        k: v for k, v in (cfg.get("metrics") or {}).items() if _finite(v)}}
    return ModelEntry(
        id=model_id, name=name, task=str(cfg["task"]), task_kind=cfg.get("task_kind"),
        modality=str(cfg.get("modality") or cfg["encoder"].get("modality") or "unknown"),
        output_names=names, units=list(units) if units is not None else [None] * len(names),
        arch=str(cfg["encoder"]["arch"]), input_size=int(cfg["preprocess"]["input_size"]),
        max_days=float(cfg["max_days"]) if cfg.get("max_days") is not None else None,
        has_units=units is not None, config=cfg, card=_read_card(folder), **view, **extra)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "model"


_MARKERS = ("config.json", "model.safetensors")  # either makes a folder a model folder (complete or not)


def _candidate_folders(root: Path) -> list[Path]:
    """Folders holding a ``config.json`` or a ``model.safetensors`` at ``root`` or up to ``_MAX_DEPTH``
    levels below (hidden ones skipped); a folder with only one of the two is reported as incomplete."""
    if any((root / m).is_file() for m in _MARKERS):
        return [root]
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if len(rel.parts) >= _MAX_DEPTH:
            dirnames[:] = []
        if rel.parts and any(m in filenames for m in _MARKERS):
            found.append(Path(dirpath))
            dirnames[:] = []  # a model folder's sub-folders are not models
    return sorted(found)


# -- demo models -----------------------------------------------------------------------------------------

DEMO_CLASSES = ["normal", "diabetic retinopathy", "glaucoma", "age-related macular degeneration"]
DEMO_SEG_CLASSES = ["background", "optic disc", "optic cup"]
DEMO_SIZE = 224


def _demo_config(task: str, head_type: str, head_args: dict[str, Any], features: dict[str, Any],
                 **extra: Any) -> dict[str, Any]:
    from visionfm.data.modalities import get_stats

    mean, std = get_stats("Fundus")
    cfg = {
        "format_version": 1, "name": f"Demo {task}: {DEMO_LABEL}", "task": task, "modality": "Fundus",
        "encoder": {"arch": "vit_tiny", "patch_size": 16, "embed_dim": 192, "depth": 12,
                    "masked_im_modeling": True, "weights_source": "random (seed 0)", "frozen": True},
        "preprocess": {"input_size": DEMO_SIZE, "interpolation": "bilinear", "mean": list(mean), "std": list(std)},
        "features": features, "head": {"type": head_type, "args": head_args},
        "data": {"source": "none: fixed random weights, for trying out the app only"},
        "license": "demo only; not a medical device",
    }
    cfg.update(extra)
    return cfg


def _build_demo(cfg: dict[str, Any], seed: int) -> Any:
    """The model a demo config describes, with weights drawn from ``seed`` (global RNG state untouched)."""
    from visionfm.packaging import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(cfg, "demo")
    return model.eval()


def demo_models() -> list[ModelEntry]:
    """The two in-memory demo models (classification, segmentation); weights are built on first use."""
    cls_cfg = _demo_config("classification", "cls",
                           {"embed_dim": 192 * 4, "num_classes": len(DEMO_CLASSES)},
                           {"type": "pooled", "n_last_blocks": 4, "avgpool": 0},
                           task_kind="multiclass", class_names=list(DEMO_CLASSES))
    seg_cfg = _demo_config("segmentation", "unetr",
                           {"embed_dim": 192, "num_classes": len(DEMO_SEG_CLASSES), "patch_size": 16},
                           {"type": "dense", "block_ids": [2, 5, 8, 11]},
                           class_names=list(DEMO_SEG_CLASSES))
    return [
        _entry_from_config(cls_cfg, "demo-classification", cls_cfg["name"], demo=True,
                           factory=lambda: _build_demo(cls_cfg, 0)),
        _entry_from_config(seg_cfg, "demo-segmentation", seg_cfg["name"], demo=True,
                           factory=lambda: _build_demo(seg_cfg, 1)),
    ]


# -- the registry ----------------------------------------------------------------------------------------


class ModelRegistry:
    """Model folders under ``models_dir`` by id, each loaded at most once.

    Args:
        models_dir: a model folder, or a folder of model folders; ``None`` (or a folder without a valid
            model) offers the demo models.
        device: ``cpu`` or ``cuda``.
        demo_when_empty: offer the demo models when no valid model is found.

    ``problems`` lists the folders that are not served, each ``{"folder", "error"}`` (plus ``"id"`` for a
    model that was listed and then failed to load); ``error`` is client-safe (no server path).
    """

    def __init__(self, models_dir: str | os.PathLike[str] | None, device: str = "cpu",
                 demo_when_empty: bool = True) -> None:
        self.device = torch.device(device)
        self.entries: dict[str, ModelEntry] = {}
        self.problems: list[dict[str, str]] = []
        self._models: dict[str, Any] = {}
        self._load_locks: dict[str, threading.Lock] = {}
        self._run_locks: dict[str, threading.Lock] = {}
        self._failed: dict[str, str] = {}  # id -> problem, for models that failed to load
        self._folders: dict[str, str] = {}  # id -> the folder as the page names it
        self._lock = threading.Lock()  # guards entries / problems when a model fails while serving
        self.root = None if models_dir is None else Path(models_dir).expanduser()
        self.redact = Redactor()
        if self.root is not None:
            if not self.root.is_dir():
                raise ConfigError(f"--models {self.root}: not a folder (expected a model folder or a folder of them)")
            self.redact.add(self.root, self.root.name or "models")
            for folder in _candidate_folders(self.root):
                rel = folder.relative_to(self.root).as_posix()
                if rel == ".":
                    rel = folder.resolve().name
                elif rel.endswith("/model"):
                    rel = rel[: -len("/model")]
                self.redact.add(folder, rel)
                self._discover(folder, rel)
        if not self.entries and demo_when_empty:
            for entry in demo_models():
                self._add(entry)

    def _discover(self, folder: Path, rel: str) -> None:
        """Check one candidate folder cheaply and list it, or record why not (never raises)."""
        from visionfm.packaging.model_folder import check_model_folder

        try:
            cfg = check_model_folder(folder)
            model_id = base = _slug(rel)
            n = 2
            while model_id in self.entries:
                model_id, n = f"{base}-{n}", n + 1
            entry = _entry_from_config(cfg, model_id, str(cfg.get("name") or rel), folder=folder)
            entry.card = self._redact_text(entry.card)
            entry.evaluated_on = self._redact_text(entry.evaluated_on)
        except VisionFMError as exc:
            log.info("not serving %s: %s", folder, exc)  # `visionfm serve` prints the problems at start-up
            self.problems.append({"folder": rel, "error": self._client_message(exc, folder)})
            return
        except Exception as exc:  # a config the checks let through but the listing cannot read
            ref = error_id()
            log.exception("not serving %s (error id %s)", folder, ref)
            self.problems.append({"folder": rel, "error": f"could not be read ({type(exc).__name__}; error id {ref}, "
                                                         "details in the server log)"})
            return
        self._add(entry)
        self._folders[entry.id] = rel

    def _redact_text(self, text: str | None) -> str | None:
        """``text`` (a model card, a recorded split) with the server paths in it shortened as in error
        messages (:class:`~visionfm.serve.redact.Redactor`), line by line, indentation kept."""
        if not text:
            return text
        out = []
        for line in text.split("\n"):
            if "/" in line or "\\" in line:
                body = line.lstrip()
                line = line[: len(line) - len(body)] + self.redact(body)
            out.append(line)
        return "\n".join(out)

    def _client_message(self, exc: BaseException, folder: Path | None) -> str:
        msg = str(exc)
        if folder is not None:
            for form in (str(folder), str(folder.resolve())):
                if msg.startswith(form + ": "):
                    msg = msg[len(form) + 2:]
        return self.redact(msg)

    def _add(self, entry: ModelEntry) -> None:
        self.entries[entry.id] = entry
        self._load_locks[entry.id] = threading.Lock()
        self._run_locks[entry.id] = threading.Lock()

    def mark_broken(self, model_id: str, exc: BaseException) -> str:
        """Stop offering ``model_id`` (it failed to load or to warm up): it moves to ``problems``; returns the
        client-safe message. The full error goes to the server log."""
        with self._lock:
            entry = self.entries.get(model_id)
            if entry is None:
                return self._failed.get(model_id, "not available")
            folder = entry.folder
            label = self._folders.get(model_id, model_id)
            if isinstance(exc, VisionFMError):
                msg = self._client_message(exc, folder)
                log.error("model %s (%s) cannot be served: %s", model_id, folder, exc)
            else:
                ref = error_id()
                log.error("model %s (%s) cannot be served (error id %s)", model_id, folder, ref, exc_info=exc)
                msg = f"could not be loaded or run ({type(exc).__name__}; error id {ref}, details in the server log)"
            self._failed[model_id] = msg
            # copy-on-write: requests iterating the listing meanwhile keep a consistent dict
            self.entries = {k: v for k, v in self.entries.items() if k != model_id}
            self.problems.append({"folder": label, "id": model_id, "error": msg})
            self._models.pop(model_id, None)
            return msg

    def __len__(self) -> int:
        return len(self.entries)

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e.public() for e in list(self.entries.values())]

    def problem_list(self) -> list[dict[str, str]]:
        with self._lock:
            return [dict(p) for p in self.problems]

    def entry(self, model_id: str) -> ModelEntry:
        try:
            return self.entries[model_id]
        except KeyError:
            if model_id in self._failed:
                raise ModelUnavailableError(f"model {model_id!r} is not available: {self._failed[model_id]}") from None
            offered = ", ".join(self.entries) or "none"
            raise UnknownModelError(f"unknown model {model_id!r}; this server offers: {offered}") from None

    def is_loaded(self, model_id: str) -> bool:
        return model_id in self._models

    def get(self, model_id: str) -> Any:
        """The loaded :class:`~visionfm.packaging.VisionFMModel` (loaded on first call, then cached).

        Raises:
            UnknownModelError: not an id of this server.
            ModelUnavailableError: the model failed to load (now, or before); it is no longer offered.
        """
        entry = self.entry(model_id)
        model = self._models.get(model_id)
        if model is not None:
            return model
        with self._load_locks[model_id]:
            model = self._models.get(model_id)
            if model is None:
                self.entry(model_id)  # another request's load may have failed meanwhile
                try:
                    if entry.factory is not None:
                        model = entry.factory()
                    else:
                        from visionfm.packaging import from_pretrained

                        model = from_pretrained(entry.folder, device="cpu")  # type: ignore[arg-type]
                    model = model.to(self.device).eval()
                except Exception as exc:
                    raise ModelUnavailableError(
                        f"model {model_id!r} is not available: {self.mark_broken(model_id, exc)}") from None
                self._models[model_id] = model
                log.info("model %s loaded", model_id)
        return model

    def run_lock(self, model_id: str) -> threading.Lock:
        """Held while one request runs a model: the model's modules are shared, requests take turns."""
        self.entry(model_id)
        return self._run_locks[model_id]
