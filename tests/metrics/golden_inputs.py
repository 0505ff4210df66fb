"""Fixed, seeded inputs whose metric and loss values were recorded before the computations moved to
scikit-learn / MONAI (values in :mod:`tests.metrics.golden_values`), so the rewrite is shown to give
the same numbers."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Numeric / bool / None / str leaves of a nested result as ``{"a.b[0]": value}``."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{i}]"))
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        out[prefix] = obj
    else:
        out[prefix] = float(obj)
    return out


def classification_cases() -> dict[str, tuple[np.ndarray, np.ndarray, str, dict[str, Any]]]:
    rng = np.random.default_rng(1234)
    cases: dict[str, tuple[np.ndarray, np.ndarray, str, dict[str, Any]]] = {}
    y = rng.integers(0, 2, 120)
    s = np.clip(0.35 * y + 0.65 * rng.random(120), 0, 1)
    cases["binary"] = (y, s, "binary", {"threshold": 0.5})
    cases["binary_ties"] = (y, np.round(s, 1), "binary", {"threshold": 0.4})  # heavy ties, also at the threshold
    cases["binary_one_class"] = (np.ones(20, dtype=int), rng.random(20), "binary", {})
    c = 5
    y = rng.integers(0, c, 150)
    s = rng.random((150, c))
    s[np.arange(150), y] += rng.random(150)
    s = np.round(s / s.sum(1, keepdims=True), 2)  # ties within columns and in argmax
    s = s / s.sum(1, keepdims=True)
    cases["multiclass"] = (y, s, "multiclass", {})
    cases["multiclass_ordinal"] = (y, s, "multiclass", {"ordinal": True})
    y4 = rng.integers(0, 4, 80)
    y4[y4 == 2] = 3  # class 2 never in the ground truth
    s4 = rng.random((80, 4)) ** 2
    s4[:, 2] *= 0.2
    s4 = s4 / s4.sum(1, keepdims=True)
    cases["multiclass_missing_class"] = (y4, s4, "multiclass", {})
    n, labels = 100, 4
    ym = (rng.random((n, labels)) < [0.3, 0.5, 0.1, 1.0]).astype(np.float64)  # label 3: positives only
    ym[rng.random((n, labels)) < 0.15] = np.nan  # not annotated
    ym[:5, 0] = -1
    sm = np.round(np.clip(0.3 * np.nan_to_num(ym, nan=0.0).clip(0) + 0.7 * rng.random((n, labels)), 0, 1), 2)
    cases["multilabel"] = (ym, sm, "multilabel", {"threshold": [0.5, 0.4, 0.5, 0.5]})
    return cases


def dense_cases() -> dict[str, tuple[np.ndarray, np.ndarray, int, int | None]]:
    rng = np.random.default_rng(99)
    b, h, w, c = 6, 24, 20, 4
    t = np.zeros((b, h, w), dtype=np.int64)
    p = np.zeros((b, h, w), dtype=np.int64)
    for i in range(b):  # rectangles and discs, shifted between truth and prediction
        r0, c0 = rng.integers(2, 8, 2)
        t[i, r0:r0 + 8, c0:c0 + 6] = 1
        p[i, r0 + 1:r0 + 9, c0 - 1:c0 + 6] = 1
        yy, xx = np.mgrid[:h, :w]
        t[i][(yy - 16) ** 2 + (xx - 12) ** 2 < 12 + i] = 2
        p[i][(yy - 15) ** 2 + (xx - 13) ** 2 < 10 + 2 * i] = 2
        noise = rng.random((h, w)) < 0.03
        p[i][noise] = rng.integers(0, c, int(noise.sum()))
    t[1][t[1] == 2] = 0  # class 2 only predicted in image 1
    p[2][p[2] == 1] = 0  # class 1 only in the truth of image 2
    p[3][p[3] == 3] = 0  # class 3 absent from both in image 3
    t[4, 0:3, 0:3] = 3
    ign = t.copy()
    ign[:, :, :2] = 255  # two ignored columns
    return {"plain": (p, t, c, None), "ignore_index": (p, ign, c, 255)}


def loss_cases() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return {
        "binary": (torch.randn(3, 1, 9, 7, generator=g) * 2, torch.randint(0, 2, (3, 9, 7), generator=g)),
        "multiclass": (torch.randn(2, 4, 8, 6, generator=g) * 3, torch.randint(0, 4, (2, 8, 6), generator=g)),
        "multiclass_empty_class": (torch.randn(2, 3, 5, 5, generator=g), torch.randint(0, 2, (2, 5, 5), generator=g)),
    }
