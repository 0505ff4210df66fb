"""visionfm.metrics.classification against scikit-learn on small hand-made sets.

Expected values come from scikit-learn (``roc_auc_score``, ``average_precision_score``,
``precision_recall_fscore_support``, ``cohen_kappa_score``, ``balanced_accuracy_score``,
``confusion_matrix``) unless a test says it was worked out by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from tests.metrics import golden_inputs, golden_values
from visionfm.metrics import (
    average_precision,
    binary_auroc,
    classification_metrics,
    cohen_kappa,
    f1_at_threshold,
    ordinal_metrics,
    pr_points,
    roc_points,
    sensitivity_at_specificity,
    specificity_at_sensitivity,
)

# Binary set with ties in the scores (two positives and a negative share 0.6).
Y_BIN = np.array([0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0])
S_BIN = np.array([0.1, 0.6, 0.6, 0.8, 0.3, 0.6, 0.45, 0.9, 0.2, 0.7, 0.05, 0.55, 0.5, 0.35, 0.95, 0.4])

# Multiclass set, 4 classes, all present.
Y_MC = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 2, 1, 3, 0, 0, 2, 1])


def _mc_scores(y: np.ndarray, c: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = rng.random((len(y), c))
    s[np.arange(len(y)), y] += 0.8 * rng.random(len(y))
    return s / s.sum(1, keepdims=True)


def _json_roundtrip(result: dict) -> None:
    json.dumps(result, allow_nan=False)  # raises on NaN or non-JSON types


def _nan_to_none(values):
    return [None if np.isnan(v) else pytest.approx(float(v)) for v in values]


def test_binary_matches_sklearn():
    r = classification_metrics(Y_BIN, S_BIN, "binary", threshold=0.5)
    pred = (S_BIN >= 0.5).astype(int)
    assert r["auroc"] == pytest.approx(skm.roc_auc_score(Y_BIN, S_BIN))
    assert r["aupr"] == pytest.approx(skm.average_precision_score(Y_BIN, S_BIN))
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(Y_BIN, pred))
    assert r["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(Y_BIN, pred))
    p, rc, f, sup = skm.precision_recall_fscore_support(Y_BIN, pred, average=None)
    assert r["precision_macro"] == pytest.approx(p.mean())
    assert r["recall_macro"] == pytest.approx(rc.mean())
    assert r["f1_macro"] == pytest.approx(f.mean())
    assert r["f1_macro_includes_class0"] is True
    assert r["f1_positive"] == pytest.approx(skm.f1_score(Y_BIN, pred))
    assert r["sensitivity"] == pytest.approx(skm.recall_score(Y_BIN, pred))
    assert r["specificity"] == pytest.approx(skm.recall_score(Y_BIN, pred, pos_label=0))
    assert r["ppv"] == pytest.approx(skm.precision_score(Y_BIN, pred))
    assert r["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(Y_BIN, pred))
    assert r["confusion_matrix"] == skm.confusion_matrix(Y_BIN, pred).tolist()
    assert r["support"] == {"negative": int(sup[0]), "positive": int(sup[1])}
    assert r["per_class"]["negative"]["f1"] == pytest.approx(f[0])
    # The original's thresholded "AP" (reference §6.3), kept for comparison only.
    assert r["aupr_thresholded_original"] == pytest.approx(
        skm.average_precision_score(Y_BIN, (S_BIN > 0.5).astype(float))
    )
    assert r["undefined"] == {}
    _json_roundtrip(r)


def test_binary_input_forms_agree():
    ref = classification_metrics(Y_BIN, S_BIN, "binary")
    as_torch = classification_metrics(torch.tensor(Y_BIN), torch.tensor(S_BIN, dtype=torch.float32), "binary")
    col = classification_metrics(Y_BIN[:, None], S_BIN[:, None], "binary")
    two = classification_metrics(Y_BIN.astype(bool), np.stack([1 - S_BIN, S_BIN], 1), "binary")
    for other in (as_torch, col, two):
        for key in ("auroc", "aupr", "accuracy", "f1_macro", "cohen_kappa"):
            assert other[key] == pytest.approx(ref[key], abs=1e-6)


def test_binary_single_class_is_undefined_not_a_crash():
    y = np.zeros(6, dtype=int)
    s = np.array([0.1, 0.7, 0.2, 0.4, 0.9, 0.3])
    r = classification_metrics(y, s, "binary")
    assert r["auroc"] is None and "only one class" in r["undefined"]["auroc"]
    assert r["aupr"] is None and "aupr" in r["undefined"]
    assert r["sensitivity"] is None and r["specificity"] == pytest.approx(4 / 6)
    # Recall of the absent positive class is undefined: the macro mean uses the other class only.
    assert r["averaged_over"]["recall_macro"] == {"n_defined": 1, "n_total": 2}
    assert r["recall_macro"] == pytest.approx(4 / 6)
    # F1 = 2TP/(2TP+FP+FN) stays defined (0) for the positive class because it was predicted twice.
    pred = (s >= 0.5).astype(int)
    assert r["f1_macro"] == pytest.approx(
        skm.f1_score(y, pred, labels=[0, 1], average="macro", zero_division=np.nan)
    )
    _json_roundtrip(r)


def test_logits_are_refused():
    with pytest.raises(ValueError, match="logits"):
        classification_metrics(Y_BIN, S_BIN * 4 - 2, "binary")
    with pytest.raises(ValueError, match="task"):
        classification_metrics(Y_BIN, S_BIN, "ordinal")
    with pytest.raises(ValueError, match="only 0 and 1"):
        classification_metrics(Y_BIN * 2, S_BIN, "binary")


def test_multiclass_matches_sklearn():
    s = _mc_scores(Y_MC, 4)
    r = classification_metrics(Y_MC, s, "multiclass", class_names=["a", "b", "c", "d"])
    pred = s.argmax(1)
    labels = list(range(4))
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(Y_MC, pred))
    assert r["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(Y_MC, pred))
    assert r["auroc_macro"] == pytest.approx(skm.roc_auc_score(Y_MC, s, multi_class="ovr", average="macro"))
    assert r["auroc_weighted"] == pytest.approx(skm.roc_auc_score(Y_MC, s, multi_class="ovr", average="weighted"))
    onehot = label_binarize(Y_MC, classes=labels)
    ap = skm.average_precision_score(onehot, s, average=None)
    assert [r["per_class"][n]["aupr"] for n in "abcd"] == pytest.approx(ap)
    assert r["aupr_macro"] == pytest.approx(ap.mean())
    assert r["aupr_weighted"] == pytest.approx(skm.average_precision_score(onehot, s, average="weighted"))
    p, rc, f, sup = skm.precision_recall_fscore_support(Y_MC, pred, labels=labels, average=None)
    assert [r["per_class"][n]["precision"] for n in "abcd"] == pytest.approx(p)
    assert [r["per_class"][n]["recall"] for n in "abcd"] == pytest.approx(rc)
    assert [r["per_class"][n]["f1"] for n in "abcd"] == pytest.approx(f)
    assert r["f1_macro"] == pytest.approx(skm.f1_score(Y_MC, pred, average="macro"))
    assert r["sensitivity_macro"] == pytest.approx(rc.mean())
    mcm = skm.multilabel_confusion_matrix(Y_MC, pred, labels=labels)
    spec = mcm[:, 0, 0] / (mcm[:, 0, 0] + mcm[:, 0, 1])
    assert [r["per_class"][n]["specificity"] for n in "abcd"] == pytest.approx(spec)
    assert r["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(Y_MC, pred))
    assert r["quadratic_weighted_kappa"] == pytest.approx(skm.cohen_kappa_score(Y_MC, pred, weights="quadratic"))
    assert r["confusion_matrix"] == skm.confusion_matrix(Y_MC, pred, labels=labels).tolist()
    # Original validation convention: mean over classes 1..C-1 (reference §6.2).
    assert r["f1_macro_excl_class0"] == pytest.approx(f[1:].mean())
    assert r["auroc_mean_all_classes_original"] == pytest.approx(r["auroc_macro"])
    _json_roundtrip(r)


def test_multiclass_absent_class():
    # Class 3 never occurs in the ground truth but is predicted for two samples.
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 2, 1])
    s = _mc_scores(y, 4, seed=1)
    s[[1, 4]] = [0.1, 0.1, 0.1, 0.7]
    r = classification_metrics(y, s, "multiclass")
    pred = s.argmax(1)
    labels = [0, 1, 2, 3]
    assert r["per_class"]["class 3"]["auroc"] is None
    assert r["undefined"]["auroc[class 3]"] == "class absent from ground truth"
    per_class_auc = [skm.roc_auc_score(y == k, s[:, k]) for k in range(3)]
    assert r["auroc_macro"] == pytest.approx(np.mean(per_class_auc))
    assert r["averaged_over"]["auroc_macro"] == {"n_defined": 3, "n_total": 4}
    # scikit-learn's zero_division=nan leaves undefined classes out of the mean, as we do.
    f = skm.f1_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    assert [r["per_class"][f"class {k}"]["f1"] for k in labels] == _nan_to_none(f)
    p = skm.precision_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    assert [r["per_class"][f"class {k}"]["precision"] for k in labels] == _nan_to_none(p)
    rc = skm.recall_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    assert r["per_class"]["class 3"]["recall"] is None
    assert r["recall_macro"] == pytest.approx(np.nanmean(rc))
    assert r["precision_macro"] == pytest.approx(
        skm.precision_score(y, pred, labels=labels, average="macro", zero_division=np.nan)
    )
    with pytest.warns(UserWarning):  # sklearn warns that y_pred has a class absent from y_true
        assert r["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert r["quadratic_weighted_kappa"] == pytest.approx(
        skm.cohen_kappa_score(y, pred, labels=labels, weights="quadratic")
    )
    # The original averaged AUROC over every class and got NaN; reported as undefined here.
    assert r["auroc_mean_all_classes_original"] is None
    assert "auroc_mean_all_classes_original" in r["undefined"]
    _json_roundtrip(r)


def test_absent_grade_keeps_its_weight_in_quadratic_kappa():
    # Grade 2 is absent from truth and predictions; kappa weights must still use indices 0..3.
    y = np.array([0, 1, 3, 3, 0, 1])
    pred = np.array([0, 3, 3, 1, 0, 1])
    cm = skm.confusion_matrix(y, pred, labels=[0, 1, 2, 3])
    assert cohen_kappa(cm, "quadratic") == pytest.approx(
        skm.cohen_kappa_score(y, pred, labels=[0, 1, 2, 3], weights="quadratic")
    )
    assert cohen_kappa(cm, "linear") == pytest.approx(
        skm.cohen_kappa_score(y, pred, labels=[0, 1, 2, 3], weights="linear")
    )
    assert cohen_kappa(np.array([[5, 0], [0, 0]])) is None  # one class only


def test_ordinal_metrics_by_hand():
    y = np.array([0, 1, 2, 4, 3])
    s = np.eye(5)[[0, 2, 2, 1, 3]]  # predictions 0, 2, 2, 1, 3 -> errors 0, 1, 0, 3, 0
    r = classification_metrics(y, s, "multiclass", ordinal=True)
    o = r["ordinal"]
    assert o["mean_absolute_error"] == pytest.approx(4 / 5)
    assert o["within_one_accuracy"] == pytest.approx(4 / 5)
    assert o["off_by"] == {"0": 3, "1": 1, "2": 0, "3": 1, "4": 0}
    # Quadratic: sum w*O = 0+1+0+9+0 = 10; sum w*E = (30*1 + 15*1 + 10*2 + 15*1 + 30*0) / 5 = 16.
    assert o["quadratic_kappa"] == pytest.approx(1 - 10 / 16)
    assert o["quadratic_kappa"] == pytest.approx(r["quadratic_weighted_kappa"])
    # Linear: sum w*O = 4; sum w*E = (10 + 7 + 6*2 + 7 + 0) / 5 = 7.2.
    assert o["linear_kappa"] == pytest.approx(1 - 4 / 7.2)
    # Ranks of y 1,2,3,5,4 and of the predictions 1,3.5,3.5,2,5: r = 3.5 / sqrt(10 * 9.5).
    assert o["spearman"] == pytest.approx(3.5 / np.sqrt(95))
    assert o["spearman_expected_grade"] == pytest.approx(o["spearman"])  # one-hot scores: expected = argmax
    assert ordinal_metrics(y, s) == {**o, "undefined": {}}
    assert "ordinal" not in classification_metrics(y, s, "multiclass")
    _json_roundtrip(r)


def test_ordinal_expected_grade_and_undefined_spearman():
    y = np.array([0, 1, 2, 2])
    s = np.array([[0.6, 0.4, 0.0], [0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.4, 0.3, 0.3]])  # always grade 0
    r = classification_metrics(y, s, "multiclass", ordinal=True)
    assert r["ordinal"]["spearman"] is None and "ordinal.spearman" in r["undefined"]
    expected = s @ np.arange(3)  # 0.4, 0.5, 0.9, 0.9
    from scipy.stats import spearmanr

    assert r["ordinal"]["spearman_expected_grade"] == pytest.approx(spearmanr(y, expected).statistic)
    assert r["ordinal"]["off_by"] == {"0": 1, "1": 1, "2": 2}
    with pytest.raises(ValueError, match="ordinal=True applies to multiclass"):
        classification_metrics(Y_BIN, S_BIN, "binary", ordinal=True)


def test_multiclass_one_hot_targets():
    s = _mc_scores(Y_MC, 4)
    a = classification_metrics(Y_MC, s, "multiclass")
    b = classification_metrics(np.eye(4)[Y_MC], s, "multiclass")
    assert a["auroc_macro"] == pytest.approx(b["auroc_macro"])
    with pytest.raises(ValueError, match="class_names"):
        classification_metrics(Y_MC, s, "multiclass", class_names=["a", "b"])


def test_multilabel_matches_sklearn_and_skips_unannotated():
    rng = np.random.default_rng(3)
    y = (rng.random((40, 3)) < 0.4).astype(float)
    s = np.clip(0.5 * y + 0.6 * rng.random((40, 3)), 0, 1)
    r = classification_metrics(y, s, "multilabel", class_names=["DR", "AMD", "glaucoma"], threshold=0.5)
    pred = (s >= 0.5).astype(int)
    assert [r["per_label"][n]["auroc"] for n in ("DR", "AMD", "glaucoma")] == pytest.approx(
        skm.roc_auc_score(y, s, average=None)
    )
    assert r["auroc_macro"] == pytest.approx(skm.roc_auc_score(y, s, average="macro"))
    assert r["auroc_weighted"] == pytest.approx(skm.roc_auc_score(y, s, average="weighted"))
    assert r["aupr_macro"] == pytest.approx(skm.average_precision_score(y, s, average="macro"))
    assert r["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert r["f1_micro"] == pytest.approx(skm.f1_score(y, pred, average="micro"))
    assert r["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert r["accuracy_macro"] == pytest.approx(1 - skm.hamming_loss(y, pred))

    # Mark some entries "not annotated": each label is scored on its annotated rows only.
    y2 = y.copy()
    y2[:7, 1] = -1
    y2[10, 2] = np.nan
    r2 = classification_metrics(y2, s, "multilabel")
    assert r2["per_label"]["label 1"]["n_annotated"] == 33
    assert r2["per_label"]["label 1"]["auroc"] == pytest.approx(skm.roc_auc_score(y[7:, 1], s[7:, 1]))
    keep = np.ones(40, bool)
    keep[10] = False
    assert r2["per_label"]["label 2"]["f1"] == pytest.approx(skm.f1_score(y[keep, 2], pred[keep, 2]))
    assert r2["n_fully_annotated"] == 32
    _json_roundtrip(r2)


def test_multilabel_label_without_positives():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    s = np.array([[0.9, 0.2], [0.1, 0.7], [0.8, 0.1], [0.3, 0.2]])
    r = classification_metrics(y, s, "multilabel", threshold=[0.5, 0.5])
    assert r["per_label"]["label 1"]["auroc"] is None
    assert r["auroc_macro"] == pytest.approx(1.0)
    assert r["averaged_over"]["auroc_macro"] == {"n_defined": 1, "n_total": 2}


def test_binary_building_blocks():
    assert binary_auroc(Y_BIN, S_BIN) == pytest.approx(skm.roc_auc_score(Y_BIN, S_BIN))
    assert average_precision(Y_BIN, S_BIN) == pytest.approx(skm.average_precision_score(Y_BIN, S_BIN))
    fpr, tpr, thr = roc_points(Y_BIN, S_BIN)
    ref_fpr, ref_tpr, _ = skm.roc_curve(Y_BIN, S_BIN, drop_intermediate=False)
    assert fpr == pytest.approx(ref_fpr) and tpr == pytest.approx(ref_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(binary_auroc(Y_BIN, S_BIN))
    precision, recall, _ = pr_points(Y_BIN, S_BIN)
    ref_p, ref_r, _ = skm.precision_recall_curve(Y_BIN, S_BIN)
    ours = np.array(sorted(zip(recall, precision)))
    ref = np.array(sorted(zip(ref_r, ref_p)))
    np.testing.assert_allclose(ours, ref)
    for t in (0.3, 0.5, 0.62):
        assert f1_at_threshold(Y_BIN, S_BIN, t) == pytest.approx(skm.f1_score(Y_BIN, S_BIN >= t))
    assert binary_auroc(np.ones(4), np.arange(4) / 4) is None
    assert f1_at_threshold([0, 0], [0.1, 0.2]) is None


def test_operating_points_by_hand():
    # Negatives score .1 .2 .3 .8; positives .4 .6 .7 .9.
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.4, 0.6, 0.7, 0.9])
    # Allowing one false positive (specificity 0.75): threshold 0.4 catches every positive.
    op = sensitivity_at_specificity(y, s, 0.75)
    assert (op.sensitivity, op.specificity, op.threshold) == pytest.approx((1.0, 0.75, 0.4))
    # Specificity 1 needs a threshold above 0.8: only the 0.9 positive remains.
    op = sensitivity_at_specificity(y, s, 1.0)
    assert (op.sensitivity, op.specificity, op.threshold) == pytest.approx((0.25, 1.0, 0.9))
    op = specificity_at_sensitivity(y, s, 1.0)
    assert (op.sensitivity, op.specificity, op.threshold) == pytest.approx((1.0, 0.75, 0.4))
    undefined = sensitivity_at_specificity(np.zeros(3), [0.1, 0.2, 0.3])
    assert undefined.sensitivity is None and "undefined" in undefined.reason


# --------------------------------------------------------------------------------------------
# Same numbers as before the move to scikit-learn (values recorded on seeded inputs)
# --------------------------------------------------------------------------------------------


# Keys whose place changed on purpose: the ordinal extras moved into result["ordinal"] (a dict now,
# the flag it replaced was True/False).
RENAMED = {"mean_absolute_grade_error": "ordinal.mean_absolute_error",
           "accuracy_within_one_grade": "ordinal.within_one_accuracy", "ordinal": None}


def _assert_same_as_recorded(got: dict, want: dict, tol: float) -> None:
    want = {RENAMED.get(k, k): v for k, v in want.items() if not (k in RENAMED and RENAMED[k] is None)}
    for key, expected in want.items():
        assert key in got, f"{key} missing"
        if key.startswith("undefined."):
            continue  # only the key is recorded (the reason text may be reworded)
        value = got[key]
        if expected is None or isinstance(expected, bool):
            assert value is expected, f"{key}: {value!r} != {expected!r}"
        else:
            assert value == pytest.approx(expected, rel=tol, abs=tol), f"{key}: {value!r} != {expected!r}"
    undefined = {k for k in got if k.startswith("undefined.")}
    assert undefined == {k for k in want if k.startswith("undefined.")}


@pytest.mark.parametrize("case", sorted(golden_values.GOLDEN["classification"]))
def test_same_values_as_recorded_before_sklearn(case):
    y, s, task, kw = golden_inputs.classification_cases()[case]
    got = golden_inputs.flatten(classification_metrics(y, s, task, **kw))
    _assert_same_as_recorded(got, golden_values.GOLDEN["classification"][case], 1e-12)
