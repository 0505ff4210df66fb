"""Multi-label heads: the original's 13-label multi-task layout and a generic multi-label mode.

``visionfm13`` (reference §5.3; the layout the original hard-codes):

====== ==========================================================
index  meaning
====== ==========================================================
0–4    DR grade one-hot: Healthy, DR-1, DR-2, DR-3, DR-4
5      DR
6      Glaucoma
7      AMD
8      Cataract
9      Hypertensive retinopathy
10     RVO (retinal vein occlusion)
11     Myopia
12     Retinal detachment
====== ==========================================================

Loss (as the original): ``5 · CE(logits[:, :5], target[:, :5])`` with probability targets — the mean
over the batch of ``−Σ_k t_k log softmax(z)_k``, so an ungraded row (first five entries all zero)
contributes 0 but still counts in the batch mean — plus ``Σ_{c=5..12} w_c · mean_b BCEWithLogits(z_bc,
t_bc)`` with ``w_9 = 5`` (hypertensive retinopathy) and 1 elsewhere.

Metrics are computed once over the whole set (the original averaged them per batch and thresholded
raw logits at 0.5): DR grading is a 5-class ordinal problem on the graded rows (softmax of the first
five outputs), the eight findings are binary problems on ``sigmoid`` of their output at 0.5. The
selection value is the mean F1 over the 9 tasks (macro F1 with class 0 for grading, positive-class F1
for a finding), over tasks where F1 is defined.

``multilabel``: any number of 0/1 labels, mean BCE-with-logits, selection on macro AUROC.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from visionfm.config import TrainMultiClsConfig

import numpy as np
import torch
from torch import nn

from visionfm.engine.task import register_task
from visionfm.errors import ConfigError
from visionfm.tasks.classification import Classification

__all__ = [
    "LABEL_LAYOUTS",
    "VISIONFM13_NAMES",
    "DR_GRADES",
    "FINDINGS",
    "visionfm13_loss",
    "visionfm13_probabilities",
    "visionfm13_metrics",
    "multilabel_metrics",
    "write_task_reports",
    "Multilabel",
]

LABEL_LAYOUTS = ("visionfm13", "multilabel")
DR_GRADES = ("Healthy", "DR-1", "DR-2", "DR-3", "DR-4")
FINDINGS = ((5, "DR"), (6, "Glaucoma"), (7, "AMD"), (8, "Cataract"), (9, "Hypertensive retinopathy"),
            (10, "RVO"), (11, "Myopia"), (12, "Retinal detachment"))
VISIONFM13_NAMES = DR_GRADES + tuple(n for _, n in FINDINGS)
GRADE_WEIGHT = 5.0
FINDING_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0)  # columns 5..12; ×5 on column 9


def visionfm13_loss(logits: torch.Tensor, target: torch.Tensor, grade_weight: float = GRADE_WEIGHT,
                    finding_weights: Sequence[float] = FINDING_WEIGHTS) -> torch.Tensor:
    """The original 13-label loss (module docstring). ``logits``/``target``: ``[B, 13]``."""
    if logits.shape != target.shape or logits.shape[-1] != 13:
        raise ValueError(f"visionfm13 loss needs [B, 13] logits and targets, got {tuple(logits.shape)} and "
                         f"{tuple(target.shape)}")
    t = target.float()
    ce = -(t[:, :5] * torch.log_softmax(logits[:, :5].float(), dim=1)).sum(dim=1).mean()
    bce = nn.functional.binary_cross_entropy_with_logits(logits[:, 5:].float(), t[:, 5:], reduction="none").mean(dim=0)
    w = torch.as_tensor(list(finding_weights), dtype=bce.dtype, device=bce.device)
    return grade_weight * ce + (w * bce).sum()


def visionfm13_probabilities(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[N, 13]``: softmax over the five grade outputs, sigmoid for each finding."""
    z = torch.as_tensor(logits).float()
    return torch.cat([torch.softmax(z[:, :5], dim=1), torch.sigmoid(z[:, 5:])], dim=1).numpy().astype(np.float64)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _task_problems(y: np.ndarray, probs: np.ndarray) -> list[dict[str, Any]]:
    """The 9 evaluation problems of the visionfm13 layout: grading (graded rows) + 8 binary findings."""
    graded = y[:, :5].sum(axis=1) > 0
    out = [{"task": "dr_grading", "name": "DR grading", "kind": "multiclass", "rows": np.nonzero(graded)[0],
            "y": y[graded, :5].argmax(axis=1), "scores": probs[graded, :5], "class_names": list(DR_GRADES),
            "ordinal": True}]
    for col, name in FINDINGS:
        out.append({"task": _slug(name), "name": name, "kind": "binary", "rows": np.arange(len(y)),
                    "y": np.rint(y[:, col]).astype(np.int64), "scores": probs[:, col],
                    "class_names": [f"no {name}", name], "ordinal": None})
    return out


def _headline(kind: str, m: dict[str, Any]) -> dict[str, Any]:
    if kind == "multiclass":
        return {"n": m.get("n_samples"), "accuracy": m.get("accuracy"), "auroc": m.get("auroc_macro"),
                "f1": m.get("f1_macro"), "precision": m.get("precision_macro"), "recall": m.get("recall_macro"),
                "quadratic_weighted_kappa": m.get("quadratic_weighted_kappa")}
    return {"n": m.get("n_samples"), "accuracy": m.get("accuracy"), "auroc": m.get("auroc"), "aupr": m.get("aupr"),
            "f1": m.get("f1_positive"), "precision": m.get("precision"), "recall": m.get("recall"),
            "sensitivity": m.get("sensitivity"), "specificity": m.get("specificity")}


def _mean(values: Sequence[Any]) -> float | None:
    v = [float(x) for x in values if x is not None]
    return float(np.mean(v)) if v else None


def visionfm13_metrics(y_true: Any, probs: Any) -> dict[str, Any]:
    """Whole-set metrics of the 9 tasks: ``{"tasks": {task: headline}, "f1_mean", "auroc_mean",
    "selection"}``; a task without a defined value (e.g. no graded row) is left out of the means."""
    from visionfm.metrics import classification_metrics

    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    tasks: dict[str, Any] = {}
    for prob in _task_problems(y, p):
        if len(prob["rows"]) == 0:
            tasks[prob["task"]] = {"n": 0, "f1": None, "auroc": None}
            continue
        m = classification_metrics(prob["y"], prob["scores"], prob["kind"], class_names=prob["class_names"],
                                   ordinal=prob["ordinal"])
        tasks[prob["task"]] = _headline(prob["kind"], m)
    f1 = _mean([t["f1"] for t in tasks.values()])
    out: dict[str, Any] = {"selection": f1, "f1_mean": f1, "auroc_mean": _mean([t["auroc"] for t in tasks.values()])}
    for name, t in tasks.items():
        out[f"f1_{name}"] = t["f1"]
        out[f"auroc_{name}"] = t["auroc"]
    out["tasks"] = tasks
    return out


def multilabel_metrics(y_true: Any, probs: Any, names: Sequence[str]) -> dict[str, Any]:
    """Generic multi-label: ``selection`` = macro AUROC; ``f1_macro``, ``f1_micro``, ``subset_accuracy``."""
    from visionfm.metrics import classification_metrics

    m = classification_metrics(np.asarray(y_true, dtype=np.float64), np.asarray(probs, dtype=np.float64),
                               "multilabel", class_names=list(names))
    return {"selection": m.get("auroc_macro"), "auroc_macro": m.get("auroc_macro"), "f1_macro": m.get("f1_macro"),
            "f1_micro": m.get("f1_micro"), "subset_accuracy": m.get("subset_accuracy")}


def write_task_reports(report_dir: str | Path, layout: str, y_true: Any, probs: Any, names: Sequence[str],
                       ids: Sequence[str], n_boot: int, seed: int, title: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Reports via :func:`~visionfm.reports.evaluate_classification_run`.

    ``visionfm13``: one sub-folder per task (``dr_grading/``, ``glaucoma/``, ...) plus a summary
    ``report.html``/``metrics.json`` in ``report_dir`` with one row per task. ``multilabel``: one
    multilabel report in ``report_dir``. Returns the summary metrics.
    """
    from visionfm.reports import evaluate_classification_run, write_report

    out = Path(report_dir)
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if layout == "multilabel":
        return evaluate_classification_run(out, y, p, "multilabel", list(names), paths=list(ids), n_boot=n_boot,
                                           seed=seed, title=title, meta=meta)
    tasks: dict[str, Any] = {}
    for prob in _task_problems(y, p):
        if len(prob["rows"]) == 0:
            tasks[prob["task"]] = {"name": prob["name"], "n": 0, "f1": None, "auroc": None,
                                   "note": "no labelled sample in this set"}
            continue
        m = evaluate_classification_run(out / prob["task"], prob["y"], prob["scores"], prob["kind"],
                                        prob["class_names"], paths=[ids[i] for i in prob["rows"]],
                                        ordinal=prob["ordinal"], n_boot=n_boot, seed=seed,
                                        title=f"{title}: {prob['name']}", meta=meta)
        tasks[prob["task"]] = {"name": prob["name"], **_headline(prob["kind"], m),
                               "report": f"{prob['task']}/report.html"}
    summary: dict[str, Any] = {
        "task": "visionfm13",
        "n_samples": int(len(y)),
        "f1_mean": _mean([t["f1"] for t in tasks.values()]),
        "auroc_mean": _mean([t["auroc"] for t in tasks.values()]),
        "tasks": tasks,
        "notes": [
            "DR grading: 5-class ordinal problem on rows with a grade (softmax of outputs 0-4); F1 is macro "
            "over the five grades, class 0 included.",
            "Findings: binary problems on sigmoid(output) >= 0.5 over the whole set; F1 of the positive class.",
            "f1_mean / auroc_mean average the tasks where the value is defined; per-task reports are in the "
            "sub-folders.",
        ],
    }
    write_report(out, title, summary, meta=meta)
    return summary


# -- visionfm train-multi-cls -------------------------------------------------------------------------


@register_task
class Multilabel(Classification):
    """Multi-label classification (``visionfm13`` or ``multilabel``): one class for training and models.

    Training (:func:`~visionfm.tasks.multimodal.run_multi_store_command`): :meth:`setup` checks the 0/1
    labels and the layout, loss :meth:`loss` (the layout's), evaluation :meth:`evaluate` (the selection
    value and per-task metrics), test report :meth:`report`, model-folder fields :meth:`model_fields`.
    Its model folders are classification models of ``task_kind`` ``visionfm13`` / ``multilabel``, read
    and rendered as :class:`~visionfm.tasks.classification.Classification` (so ``config.json`` says
    ``"task": "classification"``). The registry holds an unconfigured instance (``opts`` ``None``).
    """

    name = "multilabel"
    kind = "cls"
    selection_key = "selection"
    higher_is_better = True
    original_best_key = "best_f1"  # in the original's checkpoint_<epoch>_linear.pth (its mean F1)

    def __init__(self, opts: TrainMultiClsConfig | None = None) -> None:
        self.opts = opts
        self.layout = opts.label_layout if opts is not None else "multilabel"
        self.names: list[str] = []

    def setup(self, train_labels: torch.Tensor | None, test_labels: torch.Tensor, info: Any) -> dict[str, Any]:
        from visionfm.errors import DataFormatError

        if self.opts is None:
            raise ConfigError("this Multilabel task is not configured for training (use Multilabel(opts))")
        if info and info.get("label_layout"):
            self.layout = str(info["label_layout"])  # --test: the checkpoint's layout
        if self.layout not in LABEL_LAYOUTS:
            raise ConfigError(f"--label_layout {self.layout!r}; expected one of {', '.join(LABEL_LAYOUTS)}")
        ref = train_labels if train_labels is not None else test_labels
        n = int(ref.shape[1])
        if n != int(self.opts.num_labels):
            raise ConfigError(f"--num_labels {self.opts.num_labels} but the stores hold {n} labels per image")
        for lab in (train_labels, test_labels):
            if lab is not None and not bool(((lab == 0) | (lab == 1)).all()):
                raise DataFormatError("multi-label targets must be 0/1 vectors; found other values (regression data?)")
        if self.layout == "visionfm13":
            if n != 13:
                raise ConfigError(f"--label_layout visionfm13 needs 13 labels per image, the stores hold {n} "
                                  "(use --label_layout multilabel for another layout)")
            self.names = list(VISIONFM13_NAMES)
        else:
            self.names = [f"label_{i}" for i in range(n)]
        return {"task": "multilabel", "label_layout": self.layout, "num_outputs": n, "label_names": self.names}

    def train_targets(self, labels: torch.Tensor) -> torch.Tensor:
        return labels.float()

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.layout == "visionfm13":
            return visionfm13_loss(outputs, targets)
        return nn.functional.binary_cross_entropy_with_logits(outputs.float(), targets)

    def probabilities(self, outputs: torch.Tensor) -> np.ndarray:
        if self.layout == "visionfm13":
            return visionfm13_probabilities(outputs)
        return torch.sigmoid(outputs.float()).numpy().astype(np.float64)

    def evaluate(self, outputs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        probs = self.probabilities(outputs)
        if self.layout == "visionfm13":
            return visionfm13_metrics(labels.numpy(), probs)
        return multilabel_metrics(labels.numpy(), probs, self.names)

    def report(self, run_dir: Path, outputs: torch.Tensor, inputs: Any, meta: dict[str, Any]) -> dict[str, Any]:
        from visionfm.io import save_json_atomic
        from visionfm.tasks.multimodal import write_members

        a = self.opts
        assert a is not None, "setup() runs first"
        probs = self.probabilities(outputs)
        y = inputs.labels.numpy().astype(np.float64)
        title = f"{a.name} ({', '.join(meta.get('modalities', []))}; {self.layout}, fusion {a.fusion})"
        m = write_task_reports(run_dir / "report", self.layout, y, probs, self.names, inputs.ids,
                               a.report_n_boot, a.seed, title, {"name": a.name, **{k: v for k, v in meta.items()
                                                                                   if k != "data"}})
        save_json_atomic({i: {"gt": [float(v) for v in y[r]], "pred": [float(v) for v in probs[r]]}
                          for r, i in enumerate(inputs.ids)}, run_dir / f"{a.name}_results.json")
        write_members(run_dir, inputs)
        if self.layout == "visionfm13":
            head = {"f1_mean": m["f1_mean"], "auroc_mean": m["auroc_mean"],
                    "tasks": {k: {"f1": t.get("f1"), "auroc": t.get("auroc")} for k, t in m["tasks"].items()}}
        else:
            head = {k: m.get(k) for k in ("auroc_macro", "f1_macro", "f1_micro", "subset_accuracy")}
        import logging

        logging.getLogger("visionfm.multi_cls").info("test: %s", {k: v for k, v in head.items() if k != "tasks"})
        return head

    def model_fields(self, meta: Mapping[str, Any], feat_dim: int, bn_momentum: float) -> dict[str, Any]:
        """The task's part of a pooled run's model folder (keywords of
        :func:`~visionfm.packaging.model_folder_from_training`)."""
        layout = str(meta.get("label_layout", "multilabel"))
        return {"task": "classification", "task_kind": "visionfm13" if layout == "visionfm13" else "multilabel",
                "head_type": "cls", "head_args": {"embed_dim": feat_dim, "num_classes": int(meta["num_outputs"]),
                                                  "layers": 3, "bn_momentum": bn_momentum},
                "class_names": list(meta["label_names"])}


def run_train_multi_cls(opts: TrainMultiClsConfig) -> int:
    """``visionfm train-multi-cls``: see docs/multimodal-and-regression.md."""
    from visionfm.tasks.multimodal import run_multi_store_command

    return run_multi_store_command(opts, Multilabel(opts))
