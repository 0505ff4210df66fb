"""Classification metrics computed once over a whole evaluation set.

One entry point, :func:`classification_metrics`, covers the three label layouts used by the
VisionFM decoders:

* ``"binary"``: ``scores`` ``[N]`` or ``[N, 1]`` probabilities of the positive class (``[N, 2]``
  two-column softmax output is accepted too; column 1 is the positive class), ``y_true`` in {0, 1};
* ``"multiclass"``: ``scores`` ``[N, C]`` probabilities, ``y_true`` integer ``[N]`` (or one-hot
  ``[N, C]``, the original "vfm" layout, converted with argmax);
* ``"multilabel"``: ``scores`` ``[N, L]`` probabilities, ``y_true`` multi-hot ``[N, L]``; an entry
  that is negative or NaN means "not annotated" and is left out for that label only.

Conventions (see ``docs/metrics.md``):

* Everything is computed on the whole set. The original averaged AUROC and F1 over batches
  (reference §8 item 22), which gives NaN or biased values; that is deliberately not reproduced.
* AUPR is average precision on the continuous scores. The original test mode computed it on
  predictions thresholded at 0.5 (reference §6.3, §8 item 23), which is not an area under a curve;
  that value is still reported as ``aupr_thresholded_original`` for binary tasks, for comparison.
* Macro precision/recall/F1 include class 0 (``"f1_macro_includes_class0": True``). The original's
  validation convention, which leaves class 0 out (reference §6.2), is given as
  ``f1_macro_excl_class0`` (and precision/recall) for multiclass tasks.
* A value that cannot be computed is ``None``, its reason is in ``result["undefined"]`` under the
  same key (per-class values use ``"<metric>[<class name>]"``), and macro means use the defined
  values only; ``result["averaged_over"]`` states how many.
* A sample is predicted positive when ``score >= threshold``.
* The values come from scikit-learn (``roc_auc_score``, ``roc_curve``, ``precision_recall_curve``,
  ``average_precision_score``, ``confusion_matrix``, ``precision_recall_fscore_support``,
  ``cohen_kappa_score``, ``accuracy_score``, ``mean_absolute_error``) and scipy (``spearmanr``);
  this module adds the undefined-case handling, fixed class indices and the original's variants.
* ``ordinal=True`` (multiclass) adds ``result["ordinal"]`` for ordered grades: quadratic and linear
  kappa, mean absolute grade error, within-one accuracy, Spearman correlations and the
  distribution of ``|predicted − true|`` (:func:`ordinal_metrics`).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Sequence

import numpy as np
from scipy.stats import spearmanr
from sklearn import metrics as skm

from visionfm.metrics._common import (
    Undefined,
    as_numpy,
    default_names,
    finite_or_none,
    mean_defined,
    weighted_mean_defined,
)

__all__ = [
    "TASKS",
    "classification_metrics",
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
]

TASKS = ("binary", "multiclass", "multilabel")

_CM_AXES = "rows = true class, columns = predicted class"


# --------------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------------


def _binary_labels(y: Any, name: str = "y_true") -> np.ndarray:
    """``[N]`` or ``[N, 1]`` labels in {0, 1} (bool accepted) -> int64 ``[N]``."""
    arr = as_numpy(y, name=name)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must have shape [N] or [N, 1] for a binary task, got {tuple(arr.shape)}")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not np.all(np.isfinite(arr.astype(np.float64))):
        raise ValueError(f"{name} contains NaN or inf; binary labels must be 0 or 1")
    bad = sorted(set(np.unique(arr).tolist()) - {0, 1})
    if bad:
        raise ValueError(f"{name} must contain only 0 and 1 for a binary task; found {bad[:10]!r}")
    return arr.astype(np.int64)


def _binary_scores(scores: Any, n: int | None = None) -> tuple[np.ndarray, str | None]:
    """Scores ``[N]``, ``[N, 1]`` or two-column ``[N, 2]`` -> float64 ``[N]`` (positive class)."""
    s = as_numpy(scores, name="scores", dtype=np.float64)
    note = None
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    elif s.ndim == 2 and s.shape[1] == 2:
        s = s[:, 1]
        note = "scores had two columns; column 1 was used as the probability of the positive class"
    if s.ndim != 1:
        raise ValueError(f"binary scores must have shape [N], [N, 1] or [N, 2], got {tuple(s.shape)}")
    if n is not None and s.shape[0] != n:
        raise ValueError(f"scores have {s.shape[0]} rows but y_true has {n}")
    return s, note


def _check_probabilities(s: np.ndarray, hint: str) -> None:
    if s.size == 0:
        raise ValueError("empty evaluation set: no samples to score")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    lo, hi = float(s.min()), float(s.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"scores must be probabilities in [0, 1] but range from {lo:.4g} to {hi:.4g}; "
            f"these look like logits, apply {hint} first"
        )


# --------------------------------------------------------------------------------------------
# Binary building blocks (public: used by plots and the bootstrap too)
# --------------------------------------------------------------------------------------------


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a scikit-learn metric with its warnings silenced: undefined cases are reported as ``None``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def binary_auroc(y_true: Any, scores: Any) -> float | None:
    """Area under the ROC curve, ``sklearn.metrics.roc_auc_score`` (ties count ½).

    Equal to the Mann–Whitney rank statistic and to monai's ``compute_roc_auc`` for 1-D input,
    which the original used (reference §6.1).

    Args:
        y_true: ``[N]`` labels in {0, 1}.
        scores: ``[N]`` scores, higher meaning more likely positive.

    Returns:
        The AUROC, or ``None`` when ``y_true`` contains only one class.
    """
    y = _binary_labels(y_true)
    s, _ = _binary_scores(scores, len(y))
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        return None
    return float(skm.roc_auc_score(y, s))


def roc_points(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical ROC curve: ``(fpr, tpr, thresholds)``, thresholds decreasing (``sklearn.metrics.roc_curve``).

    The first point is ``(0, 0)`` with threshold ``inf`` (nothing called positive); a sample is
    called positive when ``score >= threshold``. Every distinct score is a point (no thinning).

    Raises:
        ValueError: if ``y_true`` contains only one class (the curve is undefined).
    """
    y = _binary_labels(y_true)
    s, _ = _binary_scores(scores, len(y))
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC curve undefined: y_true has {n_pos} positives and {n_neg} negatives")
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr, np.r_[np.inf, thr[1:]]  # scikit-learn < 1.3 put max(score) + 1 first


def pr_points(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision–recall curve: ``(precision, recall, thresholds)``, recall increasing.

    ``sklearn.metrics.precision_recall_curve`` read from its end: it starts at ``(recall 0,
    precision 1)`` with threshold ``inf``, then one point per distinct score.

    Raises:
        ValueError: if ``y_true`` has no positive sample.
    """
    y = _binary_labels(y_true)
    s, _ = _binary_scores(scores, len(y))
    if int(y.sum()) == 0:
        raise ValueError("precision-recall curve undefined: y_true has no positive sample")
    precision, recall, thr = skm.precision_recall_curve(y, s, drop_intermediate=False)
    return precision[::-1].copy(), recall[::-1].copy(), np.r_[np.inf, thr[::-1]]


def average_precision(y_true: Any, scores: Any) -> float | None:
    """Average precision on continuous scores, ``sklearn.metrics.average_precision_score``.

    ``Σ_k (R_k − R_{k−1}) · P_k`` over distinct thresholds (step-wise, no interpolation). Unlike the
    original test mode (reference §6.3) it is computed on the scores, not on thresholded labels.

    Returns:
        The AP, or ``None`` when ``y_true`` has no positive sample.
    """
    y = _binary_labels(y_true)
    s, _ = _binary_scores(scores, len(y))
    if int(y.sum()) == 0:
        return None
    return float(skm.average_precision_score(y, s))


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """``[C, C]`` int64 counts; rows are the true class, columns the predicted class.

    ``sklearn.metrics.confusion_matrix`` with ``labels=range(C)``, so absent classes keep their row.
    """
    y = as_numpy(y_true, name="y_true").astype(np.int64).reshape(-1)
    p = as_numpy(y_pred, name="y_pred").astype(np.int64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} entries but y_pred has {p.size}")
    for name, arr in (("y_true", y), ("y_pred", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            bad = sorted(set(arr[(arr < 0) | (arr >= num_classes)].tolist()))[:10]
            raise ValueError(f"{name} has labels {bad!r} outside 0..{num_classes - 1}")
    if y.size == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    return skm.confusion_matrix(y, p, labels=np.arange(num_classes)).astype(np.int64)


def cohen_kappa(cm: Any, weights: str | None = None) -> float | None:
    """Cohen's kappa from a confusion matrix, optionally weighted (``sklearn.metrics.cohen_kappa_score``).

    ``kappa = 1 − Σ w·O / Σ w·E`` with ``O`` the observed counts, ``E`` the outer product of the
    marginals divided by N, and disagreement weights ``w_ij`` = ``[i≠j]`` (unweighted),
    ``|i−j|`` (``"linear"``) or ``(i−j)²`` (``"quadratic"``). All C classes keep their index, so an
    absent grade does not shift the weights (``labels=range(C)``; the SSiT
    ``quadratic_weighted_kappa`` of reference §6.4 gives the same value). The matrix cells are
    passed to scikit-learn as sample weights of the ``(true, predicted)`` pairs.

    Returns:
        The kappa, or ``None`` when chance disagreement is zero (a single class in both truth and
        predictions).
    """
    o = as_numpy(cm, name="confusion matrix", dtype=np.float64)
    c = o.shape[0]
    if o.ndim != 2 or o.shape[1] != c:
        raise ValueError(f"confusion matrix must be square, got shape {tuple(o.shape)}")
    if weights not in (None, "linear", "quadratic"):
        raise ValueError(f"weights={weights!r}; expected None, 'linear' or 'quadratic'")
    if o.sum() == 0:
        return None
    i, j = np.meshgrid(np.arange(c), np.arange(c), indexing="ij")
    kappa = _quiet(skm.cohen_kappa_score, i.ravel(), j.ravel(), labels=np.arange(c), weights=weights,
                   sample_weight=o.ravel())
    return finite_or_none(kappa)


class OperatingPoint(NamedTuple):
    """A point on the ROC curve. ``threshold`` may be ``inf`` (nothing called positive).

    All values are ``None`` (and ``reason`` says why) when the curve is undefined.
    """

    sensitivity: float | None
    specificity: float | None
    threshold: float | None
    reason: str | None = None


def _roc_or_reason(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str:
    try:
        return roc_points(y_true, scores)
    except ValueError as exc:
        if "ROC curve undefined" in str(exc):
            return str(exc)
        raise


def sensitivity_at_specificity(y_true: Any, scores: Any, specificity: float = 0.9) -> OperatingPoint:
    """Highest sensitivity among thresholds whose specificity is at least ``specificity``.

    Among thresholds with that sensitivity, the one with the highest specificity is returned.
    """
    roc = _roc_or_reason(y_true, scores)
    if isinstance(roc, str):
        return OperatingPoint(None, None, None, roc)
    fpr, tpr, thr = roc
    spec = 1.0 - fpr
    ok = spec >= specificity - 1e-12
    best = tpr[ok].max()  # the (0, 0) point always qualifies
    i = int(np.flatnonzero(ok & (tpr == best))[0])
    return OperatingPoint(float(tpr[i]), float(spec[i]), float(thr[i]))


def specificity_at_sensitivity(y_true: Any, scores: Any, sensitivity: float = 0.9) -> OperatingPoint:
    """Highest specificity among thresholds whose sensitivity is at least ``sensitivity``."""
    roc = _roc_or_reason(y_true, scores)
    if isinstance(roc, str):
        return OperatingPoint(None, None, None, roc)
    fpr, tpr, thr = roc
    spec = 1.0 - fpr
    ok = tpr >= sensitivity - 1e-12
    best = spec[ok].max()  # the last point (everything positive) has sensitivity 1
    i = int(np.flatnonzero(ok & (spec == best))[-1])
    return OperatingPoint(float(tpr[i]), float(spec[i]), float(thr[i]))


def f1_at_threshold(y_true: Any, scores: Any, threshold: float = 0.5) -> float | None:
    """F1 of the positive class when ``score >= threshold`` is called positive.

    ``sklearn.metrics.f1_score``: ``2TP / (2TP + FP + FN)``; ``None`` when there are no positives in
    truth or prediction.
    """
    y = _binary_labels(y_true)
    s, _ = _binary_scores(scores, len(y))
    if y.size == 0:
        return None
    return finite_or_none(_quiet(skm.f1_score, y, (s >= threshold).astype(np.int64), labels=[0, 1],
                                 zero_division=np.nan))


# --------------------------------------------------------------------------------------------
# Shared per-class table
# --------------------------------------------------------------------------------------------


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


_KAPPA_UNDEFINED = "chance agreement is 1 (one class only in truth and predictions)"


def _kappa(y: np.ndarray, pred: np.ndarray, c: int, weights: str | None = None) -> float | None:
    """``sklearn.metrics.cohen_kappa_score`` with every class index kept; ``None`` when undefined."""
    return finite_or_none(_quiet(skm.cohen_kappa_score, y, pred, labels=np.arange(c), weights=weights))


def _per_class_table(
    y: np.ndarray, pred: np.ndarray, cm: np.ndarray, names: list[str], und: Undefined
) -> dict[str, dict[str, Any]]:
    """One-vs-rest rates for every class: precision/recall/F1 from scikit-learn, specificity from ``cm``."""
    labels = np.arange(len(names))
    precision, recall, f1, _ = _quiet(
        skm.precision_recall_fscore_support, y, pred, labels=labels, average=None, zero_division=np.nan
    )
    tp = np.diag(cm).astype(np.int64)
    fp = cm.sum(0) - tp
    tn = cm.sum() - cm.sum(1) - fp
    table: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(names):
        table[name] = {
            "support": int(cm[c].sum()),
            "n_predicted": int(cm[:, c].sum()),
            "precision": und.check(f"precision[{name}]", precision[c], "no sample predicted as this class"),
            "recall": und.check(f"recall[{name}]", recall[c], "class absent from ground truth"),
            "sensitivity": und.check(f"sensitivity[{name}]", recall[c], "class absent from ground truth"),
            # scikit-learn has no specificity (true negative rate) function.
            "specificity": und.check(
                f"specificity[{name}]", _ratio(tn[c], tn[c] + fp[c]), "every sample belongs to this class"
            ),
            "f1": und.check(f"f1[{name}]", f1[c], "class absent from both ground truth and predictions"),
        }
    return table


def _macro(
    table: dict[str, dict[str, Any]],
    metric: str,
    key: str,
    und: Undefined,
    counts: dict[str, dict[str, int]],
    names: Sequence[str] | None = None,
) -> float | None:
    rows = [table[n] for n in (names if names is not None else table)]
    mean, n_def, n_tot = mean_defined(r[metric] for r in rows)
    counts[key] = {"n_defined": n_def, "n_total": n_tot}
    return und.check(key, mean, f"{metric} undefined for every class")


# --------------------------------------------------------------------------------------------
# Task-specific entry points
# --------------------------------------------------------------------------------------------


def _binary_metrics(y_true: Any, scores: Any, class_names: Sequence[str] | None, threshold: float) -> dict[str, Any]:
    y = _binary_labels(y_true)
    s, note = _binary_scores(scores, len(y))
    _check_probabilities(s, "a sigmoid")
    names = ["negative", "positive"] if class_names is None else default_names(class_names, 2, "class", "class_names")
    thr = float(threshold)
    und = Undefined()
    counts: dict[str, dict[str, int]] = {}
    pred = (s >= thr).astype(np.int64)
    cm = confusion_matrix(y, pred, 2)
    n = len(y)
    n_pos = int(y.sum())
    n_neg = n - n_pos
    table = _per_class_table(y, pred, cm, names, und)
    negative, positive = table[names[0]], table[names[1]]
    one_class = f"only one class present in ground truth ({n_pos} positive, {n_neg} negative)"

    result: dict[str, Any] = {
        "task": "binary",
        "n_samples": n,
        "class_names": names,
        "threshold": thr,
        "decision_rule": "predicted positive iff score >= threshold",
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": _macro(table, "recall", "balanced_accuracy", und, counts),
        "auroc": und.check("auroc", binary_auroc(y, s), one_class),
        "aupr": und.check("aupr", average_precision(y, s), "no positive case in ground truth"),
        "sensitivity": und.check("sensitivity", positive["recall"], "no positive case in ground truth"),
        "specificity": und.check("specificity", negative["recall"], "no negative case in ground truth"),
        "ppv": und.check("ppv", positive["precision"], "no sample predicted positive at this threshold"),
        "npv": und.check("npv", negative["precision"], "no sample predicted negative at this threshold"),
        "f1_positive": und.check("f1_positive", positive["f1"], "no positive in ground truth or predictions"),
        "precision_macro": _macro(table, "precision", "precision_macro", und, counts),
        "recall_macro": _macro(table, "recall", "recall_macro", und, counts),
        "f1_macro": _macro(table, "f1", "f1_macro", und, counts),
        "f1_macro_includes_class0": True,
        "cohen_kappa": und.check("cohen_kappa", _kappa(y, pred, 2), _KAPPA_UNDEFINED),
        "prevalence": float(n_pos) / n,
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_axes": _CM_AXES,
        "support": {name: table[name]["support"] for name in names},
        "per_class": table,
        "averaged_over": counts,
        # Reference §6.3: the original's "ap" used predictions thresholded with p > 0.5.
        "aupr_thresholded_original": und.check(
            "aupr_thresholded_original",
            average_precision(y, (s > 0.5).astype(np.float64)),
            "no positive case in ground truth",
        ),
    }
    notes = [
        "AUPR is average precision on the continuous scores; aupr_thresholded_original reproduces the "
        "original test mode, which thresholded the scores at 0.5 first (reference §6.3, a bug).",
        "Macro precision/recall/F1 average both classes (class 0 included), as the original's binary "
        "branch did; f1_positive is the positive class alone.",
    ]
    if note:
        notes.append(note)
    result["undefined"] = und.reasons
    result["notes"] = notes
    return result


def _multiclass_labels(y_true: Any, c: int) -> tuple[np.ndarray, str | None]:
    y = as_numpy(y_true, name="y_true")
    note = None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2:
        if y.shape[1] != c:
            raise ValueError(f"one-hot y_true has {y.shape[1]} columns but scores have {c}")
        yf = y.astype(np.float64)
        if not (np.all((yf == 0) | (yf == 1)) and np.all(yf.sum(1) == 1)):
            raise ValueError("2-D y_true must be one-hot (one 1 per row) for a multiclass task")
        y = yf.argmax(1)
        note = "y_true was one-hot and was converted with argmax"
    if y.ndim != 1:
        raise ValueError(f"y_true must have shape [N] (class indices) for multiclass, got {tuple(y.shape)}")
    yf = y.astype(np.float64)
    if not np.all(np.isfinite(yf)) or not np.all(yf == np.round(yf)):
        raise ValueError("multiclass y_true must hold integer class indices")
    yi = yf.astype(np.int64)
    if yi.size and (yi.min() < 0 or yi.max() >= c):
        bad = sorted(set(yi[(yi < 0) | (yi >= c)].tolist()))[:10]
        raise ValueError(f"y_true has class indices {bad!r} outside 0..{c - 1} (scores have {c} columns)")
    return yi, note


def _ordinal_block(y: np.ndarray, pred: np.ndarray, s: np.ndarray, und: Undefined) -> dict[str, Any]:
    """``result["ordinal"]`` (see :func:`ordinal_metrics`) on checked arrays; reasons go to ``und["ordinal.<key>"]``."""
    c = s.shape[1]
    total = s.sum(-1)
    expected = (s * np.arange(c)).sum(-1) / np.where(total > 0, total, 1.0)  # as the bootstrap kernel, tie for tie
    err = np.abs(pred - y)
    constant = "constant grades in truth or prediction (rank correlation undefined)"
    return {
        "quadratic_kappa": und.check("ordinal.quadratic_kappa", _kappa(y, pred, c, "quadratic"), _KAPPA_UNDEFINED),
        "linear_kappa": und.check("ordinal.linear_kappa", _kappa(y, pred, c, "linear"), _KAPPA_UNDEFINED),
        "mean_absolute_error": float(skm.mean_absolute_error(y, pred)),
        # No library function: the share of images graded at most one grade away.
        "within_one_accuracy": float(np.mean(err <= 1)),
        "spearman": und.check("ordinal.spearman", _quiet(spearmanr, y, pred).statistic, constant),
        "spearman_expected_grade": und.check(
            "ordinal.spearman_expected_grade", _quiet(spearmanr, y, expected).statistic, constant
        ),
        "off_by": {str(d): int(k) for d, k in enumerate(np.bincount(err, minlength=c))},
        "predicted_grade": "argmax of scores; expected grade = sum_k k * score_k",
    }


def ordinal_metrics(y_true: Any, scores: Any) -> dict[str, Any]:
    """Agreement metrics for ordered grades (e.g. DR grade 0–4), as ``result["ordinal"]``.

    Args:
        y_true: ``[N]`` grade indices (or one-hot ``[N, C]``).
        scores: ``[N, C]`` probabilities; the predicted grade is the argmax.

    Returns:
        ``{"quadratic_kappa", "linear_kappa"`` (``sklearn.metrics.cohen_kappa_score`` with every grade
        kept), ``"mean_absolute_error"`` (grades), ``"within_one_accuracy"`` (share with
        ``|pred − true| <= 1``), ``"spearman"`` (``scipy.stats.spearmanr`` of true vs predicted
        grade), ``"spearman_expected_grade"`` (true grade vs ``Σ_k k·score_k``), ``"off_by"``
        (``{"0": n, "1": n, ...}`` counts of ``|pred − true|`` for every distance ``0..C-1``),
        ``"predicted_grade"`` (how the grades were read), ``"undefined"`` (key -> reason for each
        ``None``)}``.
    """
    s = as_numpy(scores, name="scores", dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"ordinal scores must have shape [N, C] with C >= 2, got {tuple(s.shape)}")
    y, _ = _multiclass_labels(y_true, s.shape[1])
    if len(y) != s.shape[0]:
        raise ValueError(f"scores have {s.shape[0]} rows but y_true has {len(y)}")
    _check_probabilities(s, "a softmax")
    und = Undefined()
    out = _ordinal_block(y, s.argmax(1), s, und)
    out["undefined"] = {k.removeprefix("ordinal."): v for k, v in und.reasons.items()}
    return out


def _multiclass_metrics(
    y_true: Any, scores: Any, class_names: Sequence[str] | None, ordinal: bool
) -> dict[str, Any]:
    s = as_numpy(scores, name="scores", dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"multiclass scores must have shape [N, C] with C >= 2, got {tuple(s.shape)}")
    n, c = s.shape
    y, note = _multiclass_labels(y_true, c)
    if len(y) != n:
        raise ValueError(f"scores have {n} rows but y_true has {len(y)}")
    _check_probabilities(s, "a softmax")
    names = default_names(class_names, c, "class", "class_names")
    und = Undefined()
    counts: dict[str, dict[str, int]] = {}
    pred = s.argmax(1)  # ties go to the lowest class index
    cm = confusion_matrix(y, pred, c)
    table = _per_class_table(y, pred, cm, names, und)

    aurocs: list[float | None] = []
    aps: list[float | None] = []
    for k, name in enumerate(names):
        yk = (y == k).astype(np.int64)
        support = int(yk.sum())
        reason = "class absent from ground truth" if support == 0 else "every sample belongs to this class"
        auc = und.check(f"auroc[{name}]", binary_auroc(yk, s[:, k]), reason)
        ap = und.check(f"aupr[{name}]", average_precision(yk, s[:, k]), "class absent from ground truth")
        table[name]["auroc"] = auc
        table[name]["aupr"] = ap
        aurocs.append(auc)
        aps.append(ap)
    supports = [table[nm]["support"] for nm in names]

    result: dict[str, Any] = {
        "task": "multiclass",
        "n_samples": n,
        "n_classes": c,
        "class_names": names,
        "decision_rule": "predicted class = argmax of scores (ties go to the lowest index)",
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": _macro(table, "recall", "balanced_accuracy", und, counts),
        "auroc_macro": _macro(table, "auroc", "auroc_macro", und, counts),
        "auroc_weighted": und.check(
            "auroc_weighted", weighted_mean_defined(aurocs, supports), "AUROC undefined for every class"
        ),
        "aupr_macro": _macro(table, "aupr", "aupr_macro", und, counts),
        "aupr_weighted": und.check(
            "aupr_weighted", weighted_mean_defined(aps, supports), "AUPR undefined for every class"
        ),
        "sensitivity_macro": _macro(table, "sensitivity", "sensitivity_macro", und, counts),
        "specificity_macro": _macro(table, "specificity", "specificity_macro", und, counts),
        "precision_macro": _macro(table, "precision", "precision_macro", und, counts),
        "recall_macro": _macro(table, "recall", "recall_macro", und, counts),
        "f1_macro": _macro(table, "f1", "f1_macro", und, counts),
        "f1_macro_includes_class0": True,
        "cohen_kappa": und.check("cohen_kappa", _kappa(y, pred, c), _KAPPA_UNDEFINED),
        "quadratic_weighted_kappa": und.check(
            "quadratic_weighted_kappa", _kappa(y, pred, c, "quadratic"), _KAPPA_UNDEFINED
        ),
    }
    if ordinal:
        result["ordinal"] = _ordinal_block(y, pred, s, und)
    # The original train_cls_decoder validation convention (reference §6.2): mean over classes 1..C-1.
    rest = names[1:]
    result["precision_macro_excl_class0"] = _macro(table, "precision", "precision_macro_excl_class0", und, counts, rest)
    result["recall_macro_excl_class0"] = _macro(table, "recall", "recall_macro_excl_class0", und, counts, rest)
    result["f1_macro_excl_class0"] = _macro(table, "f1", "f1_macro_excl_class0", und, counts, rest)
    missing = [nm for nm, a in zip(names, aurocs) if a is None]
    result["auroc_mean_all_classes_original"] = und.check(
        "auroc_mean_all_classes_original",
        None if missing else float(np.mean([float(a) for a in aurocs if a is not None])),
        f"the original averaged over all classes and gave NaN; AUROC undefined for {missing!r}",
    )
    result.update(
        {
            "confusion_matrix": cm.tolist(),
            "confusion_matrix_axes": _CM_AXES,
            "support": {nm: sp for nm, sp in zip(names, supports)},
            "per_class": table,
            "averaged_over": counts,
            "undefined": und.reasons,
        }
    )
    notes = [
        "Macro means include class 0; *_excl_class0 reproduce the original validation convention "
        "(reference §6.2), computed with fixed class indices so absent classes do not shift the arrays.",
        "AUROC and AUPR are one-vs-rest per class on the probability columns.",
    ]
    if not ordinal:
        notes.append(
            "quadratic_weighted_kappa assumes the class indices are ordered grades; it is meaningful only "
            "for ordinal tasks (pass ordinal=True, e.g. DR grading)."
        )
    if note:
        notes.append(note)
    result["notes"] = notes
    return result


def _multilabel_metrics(
    y_true: Any, scores: Any, class_names: Sequence[str] | None, threshold: float | Sequence[float]
) -> dict[str, Any]:
    s = as_numpy(scores, name="scores", dtype=np.float64)
    y = as_numpy(y_true, name="y_true", dtype=np.float64)
    if s.ndim != 2 or y.shape != s.shape:
        raise ValueError(
            f"multilabel y_true and scores must both have shape [N, L]; got {tuple(y.shape)} and {tuple(s.shape)}"
        )
    n, n_labels = s.shape
    _check_probabilities(s, "a sigmoid")
    annotated = np.isfinite(y) & (y >= 0)
    bad = annotated & (y != 0) & (y != 1)
    if bad.any():
        found = np.unique(y[bad])[:10].tolist()
        raise ValueError(f"multilabel y_true must be 0/1 (or negative/NaN for 'not annotated'); found {found!r}")
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (n_labels,)).copy()
    names = default_names(class_names, n_labels, "label", "class_names")
    und = Undefined()
    counts: dict[str, dict[str, int]] = {}
    table: dict[str, dict[str, Any]] = {}
    pred = (s >= thr[None, :]).astype(np.int64)
    for j, name in enumerate(names):
        m = annotated[:, j]
        yj = y[m, j].astype(np.int64)
        pj = pred[m, j]
        n_pos, n_ann = int(yj.sum()), int(m.sum())
        n_neg = n_ann - n_pos
        if n_ann:
            # recall of class 0 is the specificity; per-class arrays in the order of labels=[0, 1].
            prec, rec, f1, _ = _quiet(
                skm.precision_recall_fscore_support, yj, pj, labels=[0, 1], average=None, zero_division=np.nan
            )
            acc: float | None = float(skm.accuracy_score(yj, pj))
            auc_reason = f"only one class present in ground truth ({n_pos} positive, {n_neg} negative)"
        else:
            prec = rec = f1 = np.full(2, np.nan)
            acc = None
            auc_reason = "no annotated sample for this label"
        table[name] = {
            "n_annotated": n_ann,
            "support": n_pos,
            "prevalence": und.check(f"prevalence[{name}]", _ratio(n_pos, n_ann), "no annotated sample"),
            "threshold": float(thr[j]),
            "auroc": und.check(f"auroc[{name}]", binary_auroc(yj, s[m, j]) if n_ann else None, auc_reason),
            "aupr": und.check(
                f"aupr[{name}]", average_precision(yj, s[m, j]) if n_ann else None, "no positive case in ground truth"
            ),
            "accuracy": und.check(f"accuracy[{name}]", acc, "no annotated sample"),
            "sensitivity": und.check(f"sensitivity[{name}]", rec[1], "no positive case in ground truth"),
            "specificity": und.check(f"specificity[{name}]", rec[0], "no negative case in ground truth"),
            "precision": und.check(f"precision[{name}]", prec[1], "no sample predicted positive"),
            "f1": und.check(f"f1[{name}]", f1[1], "no positive in ground truth or predictions"),
        }
    aurocs = [table[nm]["auroc"] for nm in names]
    positives = [table[nm]["support"] for nm in names]
    full = annotated.all(1)
    # Micro F1 pools every annotated (sample, label) entry: binary F1 of the pooled entries.
    f1_micro = _quiet(skm.f1_score, y[annotated].astype(np.int64), pred[annotated], labels=[0, 1],
                      zero_division=np.nan) if annotated.any() else None
    result: dict[str, Any] = {
        "task": "multilabel",
        "n_samples": n,
        "n_labels": n_labels,
        "class_names": names,
        "threshold": thr.tolist(),
        "decision_rule": "label predicted present iff score >= its threshold",
        "auroc_macro": _macro(table, "auroc", "auroc_macro", und, counts),
        "auroc_weighted": und.check(
            "auroc_weighted", weighted_mean_defined(aurocs, positives), "AUROC undefined for every label"
        ),
        "aupr_macro": _macro(table, "aupr", "aupr_macro", und, counts),
        "sensitivity_macro": _macro(table, "sensitivity", "sensitivity_macro", und, counts),
        "specificity_macro": _macro(table, "specificity", "specificity_macro", und, counts),
        "precision_macro": _macro(table, "precision", "precision_macro", und, counts),
        "f1_macro": _macro(table, "f1", "f1_macro", und, counts),
        "f1_micro": und.check("f1_micro", f1_micro, "no positive in ground truth or predictions"),
        "accuracy_macro": _macro(table, "accuracy", "accuracy_macro", und, counts),
        "subset_accuracy": und.check(
            "subset_accuracy",
            float(skm.accuracy_score(y[full].astype(np.int64), pred[full])) if full.any() else None,
            "no sample has every label annotated",
        ),
        "n_fully_annotated": int(full.sum()),
        "support": {nm: table[nm]["support"] for nm in names},
        "per_label": table,
        "averaged_over": counts,
        "undefined": und.reasons,
        "notes": [
            "Each label is scored on the samples where it is annotated (negative or NaN = not annotated).",
            "auroc_weighted weights labels by their number of positives; subset_accuracy uses only "
            "fully annotated samples. The original averaged these per batch (reference §8 item 22); "
            "here they are computed once over the whole set.",
        ],
    }
    return result


def classification_metrics(
    y_true: Any,
    scores: Any,
    task: str,
    class_names: Sequence[str] | None = None,
    threshold: float | Sequence[float] = 0.5,
    ordinal: bool = False,
) -> dict[str, Any]:
    """Every classification metric for one evaluation set, as a JSON-serialisable dict.

    Args:
        y_true: ground truth; ``[N]`` in {0, 1} (binary), ``[N]`` class indices or one-hot
            ``[N, C]`` (multiclass), multi-hot ``[N, L]`` with negative/NaN = not annotated
            (multilabel). numpy arrays, torch tensors or lists.
        scores: probabilities (not logits): ``[N]``/``[N, 1]``/``[N, 2]`` (binary), ``[N, C]``
            (multiclass), ``[N, L]`` (multilabel). Values outside [0, 1] raise ``ValueError``.
        task: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        class_names: display names (``C`` or ``L`` of them; 2 for binary, negative first).
        threshold: decision threshold for binary and multilabel (``score >= threshold``); a
            sequence gives one threshold per label. Unused for multiclass (argmax).
        ordinal: multiclass only; ``True`` marks ordered grades (e.g. DR grade 0–4) and adds the
            key ``"ordinal"`` (see below and :func:`ordinal_metrics`). ``None`` counts as ``False``.

    Returns:
        A dict. Common keys: ``task``, ``n_samples``, ``class_names``, ``support``,
        ``averaged_over`` (defined/total count behind each macro mean), ``undefined``
        (key -> reason for every ``None``) and ``notes``.

        * binary: ``accuracy``, ``balanced_accuracy``, ``auroc``, ``aupr``, ``sensitivity``,
          ``specificity``, ``ppv``, ``npv``, ``f1_positive``, ``precision_macro``,
          ``recall_macro``, ``f1_macro``, ``f1_macro_includes_class0``, ``cohen_kappa``,
          ``prevalence``, ``threshold``, ``confusion_matrix``, ``per_class``,
          ``aupr_thresholded_original``.
        * multiclass: ``accuracy``, ``balanced_accuracy``, ``auroc_macro``, ``auroc_weighted``,
          ``aupr_macro``, ``aupr_weighted``, ``sensitivity_macro``, ``specificity_macro``,
          ``precision_macro``, ``recall_macro``, ``f1_macro``, ``f1_macro_includes_class0``,
          ``cohen_kappa``, ``quadratic_weighted_kappa``, ``precision/recall/f1_macro_excl_class0``,
          ``auroc_mean_all_classes_original``, ``confusion_matrix``, ``per_class`` (support,
          n_predicted, precision, recall, sensitivity, specificity, f1, auroc, aupr).
          With ``ordinal=True`` also ``"ordinal": {"quadratic_kappa", "linear_kappa",
          "mean_absolute_error", "within_one_accuracy", "spearman", "spearman_expected_grade",
          "off_by": {"0": n, "1": n, ...}, "predicted_grade"}`` (undefined ones under
          ``undefined["ordinal.<key>"]``); the key is absent otherwise.
        * multilabel: ``auroc_macro``, ``auroc_weighted``, ``aupr_macro``, ``sensitivity_macro``,
          ``specificity_macro``, ``precision_macro``, ``f1_macro``, ``f1_micro``,
          ``accuracy_macro``, ``subset_accuracy``, ``n_fully_annotated``, ``threshold``,
          ``per_label`` (n_annotated, support, prevalence, auroc, aupr, accuracy, sensitivity,
          specificity, precision, f1).
    """
    t = str(task).lower()
    if t not in TASKS:
        raise ValueError(f"task={task!r}; expected one of {list(TASKS)}")
    if ordinal and t != "multiclass":
        raise ValueError(f"ordinal=True applies to multiclass tasks (ordered grades), not to task={task!r}")
    if t == "binary":
        if np.ndim(threshold) != 0:
            raise ValueError("a binary task takes a single threshold")
        return _binary_metrics(y_true, scores, class_names, float(threshold))  # type: ignore[arg-type]
    if t == "multiclass":
        return _multiclass_metrics(y_true, scores, class_names, bool(ordinal))
    return _multilabel_metrics(y_true, scores, class_names, threshold)
