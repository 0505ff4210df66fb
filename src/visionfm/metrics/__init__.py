"""Clinical metrics over a whole evaluation set (never averaged per batch).

* :func:`classification_metrics` — binary, multiclass and multilabel (AUROC, AUPR on scores,
  sensitivity/specificity, precision/recall/F1 with class 0 included, kappa and quadratic kappa,
  confusion matrix; ordinal grades: :func:`ordinal_metrics`), plus operating-point helpers.
* :func:`regression_metrics` — MAE, RMSE, R², Pearson r per target, and the original's relative MAE.
* :class:`SegmentationMeter`, :class:`LandmarkMeter` — per-image accumulation for dense tasks,
  mergeable across ranks.
* :func:`bootstrap_ci`, :func:`with_confidence_intervals` — percentile bootstrap intervals.

Undefined values are ``None`` with a reason in ``result["undefined"]``; see ``docs/metrics.md``.
"""

from visionfm.metrics._common import to_jsonable
from visionfm.metrics.bootstrap import BootstrapCI, bootstrap_ci, with_confidence_intervals
from visionfm.metrics.classification import (
    OperatingPoint,
    average_precision,
    binary_auroc,
    classification_metrics,
    cohen_kappa,
    confusion_matrix,
    f1_at_threshold,
    ordinal_metrics,
    pr_points,
    roc_points,
    sensitivity_at_specificity,
    specificity_at_sensitivity,
)
from visionfm.metrics.dense import LandmarkMeter, SegmentationMeter, dice_iou, hausdorff95, radial_errors
from visionfm.metrics.regression import regression_metrics

__all__ = [
    "classification_metrics",
    "regression_metrics",
    "binary_auroc",
    "average_precision",
    "roc_points",
    "pr_points",
    "confusion_matrix",
    "cohen_kappa",
    "OperatingPoint",
    "sensitivity_at_specificity",
    "specificity_at_sensitivity",
    "f1_at_threshold",
    "ordinal_metrics",
    "SegmentationMeter",
    "LandmarkMeter",
    "dice_iou",
    "hausdorff95",
    "radial_errors",
    "BootstrapCI",
    "bootstrap_ci",
    "with_confidence_intervals",
    "to_jsonable",
]
