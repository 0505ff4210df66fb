"""Segmentation and landmark metrics, accumulated image by image.

The meters keep a few numbers per image (Dice, IoU and pixel counts per class, radial errors per
landmark), never logits or masks, so a validation pass costs O(images × classes) memory. The original gathered all
``N×C×S×S`` logits on the CPU first (reference §5.4).

Conventions (see ``docs/metrics.md``):

* Dice ``2|P∩G| / (|P|+|G|)`` and IoU ``|P∩G| / |P∪G|`` per image and class
  (``monai.metrics.compute_dice`` / ``compute_iou`` on one-hot masks), then averaged over images.
  When the class is absent from both prediction and ground truth of an image the value is **1.0**,
  as miseval's ``calc_DSC_Enhanced`` used by the original (reference §6.1).
* ``include_background=False`` (default) leaves class 0 out of ``dice_mean``/``iou_mean``; the
  original's multi-class value (mean over all C classes, background included, reference §6.2) is
  reported as ``dice_mean_all_classes_original``.
* HD95 (optional, foreground classes only, in pixels): ``monai.metrics.compute_hausdorff_distance``
  with ``percentile=95``, the ``max`` of the two directed 95th percentiles of border-to-border
  distances (computed in float32 by MONAI). Both masks empty → 0.0; exactly one empty → undefined (left out of
  the mean and counted in ``hd95_n_undefined``).
* Landmarks: radial error = Euclidean distance between predicted and true point, at the input
  resolution and, when ``scale`` is given, at the original resolution. NaN true points are skipped
  and counted; NaN predicted points count as failures for success rates and are left out of MRE.

Both meters merge across processes: ``state_dict()`` holds plain numpy arrays, ``merge(other)``
concatenates, and ``all_reduce()`` gathers every rank's state with
``torch.distributed.all_gather_object`` when a process group is initialised (a no-op otherwise).
Samples duplicated by a padding ``DistributedSampler`` are counted twice; drop them before
``update`` if exact numbers matter.
"""

from __future__ import annotations

import abc
import warnings
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

from visionfm.metrics._common import Undefined, as_numpy, default_names, mean_defined

__all__ = ["dice_iou", "hausdorff95", "radial_errors", "SegmentationMeter", "LandmarkMeter"]


# --------------------------------------------------------------------------------------------
# Functional forms
# --------------------------------------------------------------------------------------------


def _label_maps(
    pred: Any, target: Any, num_classes: int, ignore_index: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    p = as_numpy(pred, name="pred_labels")
    t = as_numpy(target, name="target")
    if p.ndim == t.ndim + 1:
        raise ValueError(
            f"pred_labels has shape {tuple(p.shape)} and target {tuple(t.shape)}: pass class labels "
            "(argmax over the class axis, or sigmoid > 0.5 for one-channel output), not logits"
        )
    if p.shape != t.shape:
        raise ValueError(f"pred_labels has shape {tuple(p.shape)} but target has {tuple(t.shape)}")
    if p.ndim == 2:
        p, t = p[None], t[None]
    if p.ndim != 3:
        raise ValueError(f"label maps must have shape [B, H, W] or [H, W], got {tuple(p.shape)}")
    if p.dtype.kind == "f" and not np.all(p == np.round(p)):
        raise ValueError("pred_labels must hold integer class labels")
    p = p.astype(np.int64)
    t = t.astype(np.int64)
    valid = None
    if ignore_index is not None:
        valid = t != ignore_index
        p = np.where(valid, p, 0)
        t = np.where(valid, t, 0)
    for name, arr in (("pred_labels", p), ("target", t)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            bad = sorted(set(arr[(arr < 0) | (arr >= num_classes)].tolist()))[:10]
            raise ValueError(
                f"{name} has labels {bad!r} outside 0..{num_classes - 1} (num_classes={num_classes}, "
                f"ignore_index={ignore_index})"
            )
    return p, t, valid


_CHUNK_ELEMENTS = 4_000_000  # one-hot elements (float64) built at once per update, ~32 MB per tensor


def _one_hot_chunks(
    p: np.ndarray, t: np.ndarray, num_classes: int, valid: np.ndarray | None
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(first image, pred one-hot, target one-hot)`` float64 ``[b, C, H, W]``, a few images at a time.

    Ignored pixels (``valid`` False) are zero in every channel of both, so no metric counts them.
    """
    b = p.shape[0]
    step = max(1, _CHUNK_ELEMENTS // max(1, num_classes * int(np.prod(p.shape[1:]))))
    classes = torch.arange(num_classes)[None, :, None, None]
    if valid is not None:  # label -1 matches no class
        p, t = np.where(valid, p, -1), np.where(valid, t, -1)
    for i in range(0, b, step):
        pc = (torch.from_numpy(p[i : i + step])[:, None] == classes).double()
        tc = (torch.from_numpy(t[i : i + step])[:, None] == classes).double()
        yield i, pc, tc


def _hd95_onehot(pc: torch.Tensor, tc: torch.Tensor) -> np.ndarray:
    """MONAI's 95th-percentile Hausdorff distance per image and channel, with this module's conventions."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on every empty mask; the two cases are set below
        hd = compute_hausdorff_distance(pc, tc, include_background=True, percentile=95).double().numpy()
    has_p = pc.flatten(2).any(-1).numpy()
    has_t = tc.flatten(2).any(-1).numpy()
    # Both empty -> 0.0; exactly one empty -> undefined (NaN), whatever MONAI returns there.
    return np.where(~has_p & ~has_t, 0.0, np.where(has_p & has_t, hd, np.nan))


def _per_image(
    p: np.ndarray, t: np.ndarray, num_classes: int, valid: np.ndarray | None, hd95: bool = False
) -> dict[str, np.ndarray]:
    """Per image and class: Dice and IoU (MONAI, empty vs empty = 1.0), pixel counts, optional HD95.

    ``counts`` is ``[B, C, 3]`` int64 (intersection, predicted pixels, true pixels), for the pooled
    ``*_dataset`` values and the image counts; ``hd95`` is ``[B, C]`` with NaN in column 0 and where
    undefined.
    """
    b = p.shape[0]
    out = {
        "dice": np.empty((b, num_classes)),
        "iou": np.empty((b, num_classes)),
        "counts": np.empty((b, num_classes, 3), dtype=np.int64),
        "hd95": np.full((b, num_classes), np.nan),
    }
    for i, pc, tc in _one_hot_chunks(p, t, num_classes, valid):
        j = i + pc.shape[0]
        # ignore_empty=False is the miseval convention of the original: a class absent from both scores 1.0.
        out["dice"][i:j] = compute_dice(pc, tc, include_background=True, ignore_empty=False).numpy()
        out["iou"][i:j] = compute_iou(pc, tc, include_background=True, ignore_empty=False).numpy()
        dims = (2, 3)
        out["counts"][i:j] = torch.stack([(pc * tc).sum(dims), pc.sum(dims), tc.sum(dims)], -1).long().numpy()
        if hd95:
            out["hd95"][i:j, 1:] = _hd95_onehot(pc[:, 1:], tc[:, 1:])
    return out


def dice_iou(
    pred: Any, target: Any, num_classes: int, ignore_index: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image, per-class Dice and IoU of label maps (empty vs empty = 1.0), via ``monai.metrics``.

    Args:
        pred: predicted labels ``[B, H, W]`` or ``[H, W]`` (integers in ``0..C-1``).
        target: ground-truth labels of the same shape.
        num_classes: ``C``, background (0) included.
        ignore_index: target value whose pixels are left out (e.g. 255).

    Returns:
        ``(dice, iou)``, each ``[B, C]`` (``[C]`` for a single ``[H, W]`` image), background in column 0.
    """
    single = as_numpy(target, name="target").ndim == 2
    p, t, valid = _label_maps(pred, target, num_classes, ignore_index)
    per = _per_image(p, t, num_classes, valid)
    dice, iou = per["dice"], per["iou"]
    return (dice[0], iou[0]) if single else (dice, iou)


def hausdorff95(pred_mask: Any, true_mask: Any) -> float | None:
    """95th-percentile symmetric Hausdorff distance between two binary masks, in pixels.

    ``monai.metrics.compute_hausdorff_distance(percentile=95)``: the larger of the two directed
    95th percentiles of Euclidean distances between the mask borders (MONAI's edges: the mask minus
    its erosion, 4-connectivity in 2-D).

    Returns:
        The distance; 0.0 when both masks are empty; ``None`` when exactly one is empty.
    """
    p = as_numpy(pred_mask, name="pred_mask").astype(bool)
    g = as_numpy(true_mask, name="true_mask").astype(bool)
    if p.shape != g.shape or p.ndim != 2:
        raise ValueError(f"masks must be 2-D and of equal shape, got {tuple(p.shape)} and {tuple(g.shape)}")
    pc = torch.from_numpy(p)[None, None].double()
    tc = torch.from_numpy(g)[None, None].double()
    v = float(_hd95_onehot(pc, tc)[0, 0])
    return None if np.isnan(v) else v


def _scale_rows(scale: Any, b: int) -> np.ndarray:
    s = as_numpy(scale, name="scale", dtype=np.float64)
    if s.ndim == 0:
        s = np.full((b, 2), float(s))
    elif s.shape == (2,):
        s = np.broadcast_to(s, (b, 2)).copy()
    if s.shape != (b, 2):
        raise ValueError(f"scale must have shape [B, 2], [2] or be a scalar; got {tuple(s.shape)} for B={b}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError("scale factors must be finite and positive")
    return s


def radial_errors(pred_points: Any, true_points: Any, scale: Any = None) -> np.ndarray:
    """Euclidean distance per point, ``[B, K]`` (NaN where either point is NaN).

    Args:
        pred_points: ``[B, K, 2]`` (or ``[K, 2]``) predicted coordinates.
        true_points: same shape, ground truth.
        scale: optional ``[B, 2]`` / ``[2]`` / scalar factors multiplying each coordinate axis
            (same axis order as the points) to map to the original resolution.
    """
    p = as_numpy(pred_points, name="pred_points", dtype=np.float64)
    t = as_numpy(true_points, name="true_points", dtype=np.float64)
    if p.ndim == 2:
        p, t = p[None], t[None]
    if p.shape != t.shape or p.ndim != 3 or p.shape[-1] != 2:
        raise ValueError(f"points must have shape [B, K, 2]; got {tuple(p.shape)} and {tuple(t.shape)}")
    d = p - t
    if scale is not None:
        d = d * _scale_rows(scale, p.shape[0])[:, None, :]
    return np.sqrt((d**2).sum(-1))


# --------------------------------------------------------------------------------------------
# Meters
# --------------------------------------------------------------------------------------------


class _PerImageMeter(abc.ABC):
    """Per-image arrays concatenated along axis 0; subclasses list them in ``_STATE``."""

    _STATE: tuple[str, ...] = ()

    @abc.abstractmethod
    def _config(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _empty_state(self) -> dict[str, np.ndarray]: ...

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._parts: dict[str, list[np.ndarray]] = {k: [] for k in self._STATE}

    def _append(self, **arrays: np.ndarray) -> None:
        for k in self._STATE:
            self._parts[k].append(arrays[k])

    def _array(self, key: str) -> np.ndarray:
        parts = self._parts[key]
        if not parts:
            return self._empty_state()[key]
        if len(parts) > 1:  # consolidate so repeated compute() calls stay cheap
            self._parts[key] = [np.concatenate(parts, axis=0)]
        return self._parts[key][0]

    @property
    def n_images(self) -> int:
        return int(self._array(self._STATE[0]).shape[0])

    def state_dict(self) -> dict[str, Any]:
        """Plain numpy arrays (one row per image) plus the configuration, e.g. for ``all_gather_object``."""
        state: dict[str, Any] = {k: self._array(k).copy() for k in self._STATE}
        state["config"] = self._config()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the accumulated images with ``state`` (from :meth:`state_dict`)."""
        self._check_config(state.get("config"))
        self.reset()
        self._append(**{k: np.asarray(state[k]) for k in self._STATE})

    def _check_config(self, config: Any) -> None:
        if config != self._config():
            raise ValueError(f"cannot combine meters with different settings: {config!r} vs {self._config()!r}")

    def merge(self, other: _PerImageMeter | dict[str, Any]) -> _PerImageMeter:
        """Append the images of ``other`` (a meter of the same settings or its ``state_dict()``)."""
        state = other.state_dict() if isinstance(other, _PerImageMeter) else other
        self._check_config(state.get("config"))
        self._append(**{k: np.asarray(state[k]) for k in self._STATE})
        return self

    def all_reduce(self) -> _PerImageMeter:
        """Gather every rank's images so that each rank holds the full set (rank order).

        Uses ``torch.distributed.all_gather_object``; does nothing when no process group is
        initialised or the world size is 1. Call it once, before :meth:`compute`.
        """
        try:
            import torch.distributed as dist
        except ImportError:  # pragma: no cover
            return self
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self.state_dict())
        self.reset()
        for state in gathered:
            self.merge(state)
        return self


class SegmentationMeter(_PerImageMeter):
    """Per-image Dice / IoU (and optionally HD95) for label maps, averaged over images at the end.

    Args:
        num_classes: number of classes ``C`` including background 0 (binary segmentation: 2).
        include_background: include class 0 in ``dice_mean`` / ``iou_mean`` / ``hd95_mean``.
        class_names: ``C`` display names (default ``"background"``, ``"class 1"``, ...).
        hd95: also compute the 95th-percentile Hausdorff distance (pixels) for classes 1..C-1.
        ignore_index: target value whose pixels are left out of every count (e.g. 255).

    Example:
        >>> meter = SegmentationMeter(num_classes=2)
        >>> for logits, mask in loader:        # logits [B, C, H, W]
        ...     meter.update(logits.argmax(1), mask)
        >>> meter.all_reduce().compute()["dice_mean"]
    """

    higher_is_better = True
    _STATE = ("counts", "dice", "iou", "hd95")

    def __init__(
        self,
        num_classes: int,
        include_background: bool = False,
        class_names: Sequence[str] | None = None,
        hd95: bool = False,
        ignore_index: int | None = None,
    ) -> None:
        if int(num_classes) < 2:
            raise ValueError(
                f"num_classes={num_classes}; count background as a class (binary segmentation is num_classes=2)"
            )
        self.num_classes = int(num_classes)
        self.include_background = bool(include_background)
        if class_names is None:
            self.class_names = ["background"] + [f"class {c}" for c in range(1, self.num_classes)]
        else:
            self.class_names = default_names(class_names, self.num_classes, "class", "class_names")
        self.hd95 = bool(hd95)
        self.ignore_index = ignore_index
        self.reset()

    def _config(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "include_background": self.include_background,
            "hd95": self.hd95,
            "ignore_index": self.ignore_index,
        }

    def _empty_state(self) -> dict[str, np.ndarray]:
        return {
            "counts": np.zeros((0, self.num_classes, 3), dtype=np.int64),
            "dice": np.zeros((0, self.num_classes), dtype=np.float64),
            "iou": np.zeros((0, self.num_classes), dtype=np.float64),
            "hd95": np.zeros((0, self.num_classes), dtype=np.float64),
        }

    def update(self, pred_labels: Any, target: Any) -> None:
        """Add a batch: ``pred_labels`` and ``target`` ``[B, H, W]`` (or ``[H, W]``) integer labels."""
        p, t, valid = _label_maps(pred_labels, target, self.num_classes, self.ignore_index)
        per = _per_image(p, t, self.num_classes, valid, hd95=self.hd95)
        self._append(**per)

    def compute(self) -> dict[str, Any]:
        """Per-class and mean Dice / IoU (/ HD95) over all images seen.

        Returns:
            ``{"task": "segmentation", "n_images", "num_classes", "class_names",
            "background_included", "dice_mean", "iou_mean", ["hd95_mean"],
            "dice_mean_all_classes_original", "per_class": {name: {"dice", "iou", "dice_dataset",
            "iou_dataset", "n_images_with_class", "n_images_predicted", "n_images_both_empty",
            ["hd95", "hd95_n_undefined"]}}, "averaged_over", "undefined", "notes"}``. Dice/IoU per
            class are means over images; ``*_dataset`` pool the pixel counts of all images;
            ``n_images_with_class`` counts images whose ground truth has the class,
            ``n_images_predicted`` those whose prediction has it (0: the model never predicts it).
        """
        counts = self._array("counts")
        dice, iou, hd = self._array("dice"), self._array("iou"), self._array("hd95")
        n = counts.shape[0]
        und = Undefined()
        table: dict[str, dict[str, Any]] = {}
        no_images = "no image evaluated"
        for c, name in enumerate(self.class_names):
            tot = counts[:, c].sum(0)
            inter, ps, ts = (int(v) for v in tot)
            row: dict[str, Any] = {
                "dice": und.check(f"dice[{name}]", dice[:, c].mean() if n else None, no_images),
                "iou": und.check(f"iou[{name}]", iou[:, c].mean() if n else None, no_images),
                "dice_dataset": und.check(
                    f"dice_dataset[{name}]",
                    2.0 * inter / (ps + ts) if ps + ts else None,
                    "class absent from every prediction and ground truth",
                ),
                "iou_dataset": und.check(
                    f"iou_dataset[{name}]",
                    inter / (ps + ts - inter) if ps + ts else None,
                    "class absent from every prediction and ground truth",
                ),
                "n_images_with_class": int(np.sum(counts[:, c, 2] > 0)),
                "n_images_predicted": int(np.sum(counts[:, c, 1] > 0)),
                "n_images_both_empty": int(np.sum((counts[:, c, 1] + counts[:, c, 2]) == 0)),
            }
            if self.hd95 and c > 0:
                ok = np.isfinite(hd[:, c])
                row["hd95"] = und.check(
                    f"hd95[{name}]",
                    hd[ok, c].mean() if ok.any() else None,
                    no_images if n == 0 else "every image has this class in only one of prediction / ground truth",
                )
                row["hd95_n_undefined"] = int(n - ok.sum())
            table[name] = row
        included = self.class_names if self.include_background else self.class_names[1:]
        counts_out: dict[str, dict[str, int]] = {}
        result: dict[str, Any] = {
            "task": "segmentation",
            "n_images": n,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "background_included": self.include_background,
        }
        metrics = ["dice", "iou"] + (["hd95"] if self.hd95 else [])
        for m in metrics:
            names = [nm for nm in included if m in table[nm]]
            mean, n_def, n_tot = mean_defined(table[nm][m] for nm in names)
            counts_out[f"{m}_mean"] = {"n_defined": n_def, "n_total": n_tot}
            result[f"{m}_mean"] = und.check(f"{m}_mean", mean, f"{m} undefined for every class")
        if self.hd95:
            result["hd95_unit"] = "pixels"
        result["dice_mean_all_classes_original"] = und.check(
            "dice_mean_all_classes_original", dice.mean() if n else None, no_images
        )
        result.update(
            {
                "per_class": table,
                "averaged_over": counts_out,
                "undefined": und.reasons,
                "notes": [
                    "Dice/IoU are computed per image and averaged over images; a class absent from both "
                    "prediction and ground truth of an image scores 1.0 (miseval convention, as the original).",
                    "Background (class 0) is " + ("included in" if self.include_background else "excluded from")
                    + " dice_mean/iou_mean; dice_mean_all_classes_original averages all classes including "
                    "background, as the original multi-class metric (reference §6.2).",
                    "*_dataset values pool pixel counts over all images (one global Dice per class).",
                ]
                + (
                    [
                        "HD95 in pixels on classes 1..C-1: 0 when both masks are empty, undefined (left out "
                        "of the mean, counted in hd95_n_undefined) when exactly one is empty."
                    ]
                    if self.hd95
                    else []
                ),
            }
        )
        return result


class LandmarkMeter(_PerImageMeter):
    """Mean radial error and success rates for point landmarks.

    Args:
        num_landmarks: ``K``.
        thresholds: success-rate radii in pixels; a point succeeds when its error is ``<=`` the radius.
        landmark_names: ``K`` display names (default ``"landmark <k>"``).

    ``update(pred_points [B, K, 2], true_points [B, K, 2], scale=None)``: coordinates at the model's
    input resolution; ``scale`` ``[B, 2]`` multiplies each coordinate axis (same order as the points)
    to reach the original image resolution. Success rates are given at both resolutions (radii in
    pixels of each).
    """

    higher_is_better = False
    _STATE = ("err_input", "err_original", "truth_valid", "pred_valid", "has_scale")

    def __init__(
        self,
        num_landmarks: int,
        thresholds: Sequence[float] = (2, 4, 8),
        landmark_names: Sequence[str] | None = None,
    ) -> None:
        if int(num_landmarks) < 1:
            raise ValueError(f"num_landmarks={num_landmarks}; expected at least 1")
        self.num_landmarks = int(num_landmarks)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.landmark_names = default_names(landmark_names, self.num_landmarks, "landmark", "landmark_names")
        self.reset()

    def _config(self) -> dict[str, Any]:
        return {"num_landmarks": self.num_landmarks, "thresholds": list(self.thresholds)}

    def _empty_state(self) -> dict[str, np.ndarray]:
        k = self.num_landmarks
        return {
            "err_input": np.zeros((0, k)),
            "err_original": np.zeros((0, k)),
            "truth_valid": np.zeros((0, k), dtype=bool),
            "pred_valid": np.zeros((0, k), dtype=bool),
            "has_scale": np.zeros((0,), dtype=bool),
        }

    def update(self, pred_points: Any, true_points: Any, scale: Any = None) -> None:
        """Add a batch of ``[B, K, 2]`` predicted and true points (``scale``: ``[B, 2]``, ``[2]`` or scalar)."""
        p = as_numpy(pred_points, name="pred_points", dtype=np.float64)
        t = as_numpy(true_points, name="true_points", dtype=np.float64)
        if p.ndim == 2:
            p, t = p[None], t[None]
        if p.shape != t.shape or p.ndim != 3 or p.shape[1:] != (self.num_landmarks, 2):
            raise ValueError(
                f"points must have shape [B, {self.num_landmarks}, 2]; got {tuple(p.shape)} and {tuple(t.shape)}"
            )
        b = p.shape[0]
        err_in = radial_errors(p, t)
        if scale is None:
            err_orig = np.full_like(err_in, np.nan)
            has_scale = np.zeros(b, dtype=bool)
        else:
            err_orig = radial_errors(p, t, scale)
            has_scale = np.ones(b, dtype=bool)
        self._append(
            err_input=err_in,
            err_original=err_orig,
            truth_valid=np.isfinite(t).all(-1),
            pred_valid=np.isfinite(p).all(-1),
            has_scale=has_scale,
        )

    def _summary(
        self, err: np.ndarray, truth: np.ndarray, pred: np.ndarray, suffix: str, und: Undefined, name: str = ""
    ) -> dict[str, Any]:
        """MRE, its spread and success rates of one resolution, for all points or one landmark."""
        ok = truth & pred
        n_points = int(truth.sum())
        tag = f"[{name}]" if name else ""
        vals = err[ok]
        out = {
            f"mre{suffix}": und.check(f"mre{suffix}{tag}", vals.mean() if vals.size else None, "no evaluable point"),
            f"mre_std{suffix}": und.check(
                f"mre_std{suffix}{tag}", vals.std() if vals.size else None, "no evaluable point"
            ),
            f"median_re{suffix}": und.check(
                f"median_re{suffix}{tag}", np.median(vals) if vals.size else None, "no evaluable point"
            ),
            f"success_rate{suffix}": {
                f"{t:g}px": und.check(
                    f"success_rate{suffix}{tag}[{t:g}px]",
                    float(np.sum(vals <= t)) / n_points if n_points else None,
                    "no annotated point",
                )
                for t in self.thresholds
            },
        }
        return out

    def compute(self) -> dict[str, Any]:
        """Mean radial error per landmark and overall, success rates, counts of skipped points.

        Returns:
            ``{"task": "landmark", "n_images", "num_landmarks", "landmark_names", "thresholds_px",
            "n_points_annotated", "n_points_skipped_nan_truth", "n_missing_predictions",
            "mre_px", "mre_std_px", "median_re_px", "success_rate_px": {"2px": ...},
            "mre_original_px", "mre_std_original_px", "median_re_original_px",
            "success_rate_original_px", "per_landmark": {name: {same keys}}, "undefined", "notes"}``.
            The ``*_original_px`` values are ``None`` unless every update passed ``scale``.
        """
        err_in = self._array("err_input")
        err_or = self._array("err_original")
        truth = self._array("truth_valid")
        pred = self._array("pred_valid")
        has_scale = self._array("has_scale")
        n = err_in.shape[0]
        und = Undefined()
        result: dict[str, Any] = {
            "task": "landmark",
            "n_images": n,
            "num_landmarks": self.num_landmarks,
            "landmark_names": list(self.landmark_names),
            "thresholds_px": list(self.thresholds),
            "n_points_annotated": int(truth.sum()),
            "n_points_skipped_nan_truth": int((~truth).sum()),
            "n_missing_predictions": int((truth & ~pred).sum()),
        }
        scaled = n > 0 and bool(has_scale.all())
        if n == 0:
            scale_reason = "no image evaluated"
        else:
            scale_reason = f"scale to the original resolution was given for {int(has_scale.sum())} of {n} images"
        result.update(self._summary(err_in, truth, pred, "_px", und))
        if scaled:
            result.update(self._summary(err_or, truth, pred, "_original_px", und))
        else:
            for key in ("mre_original_px", "mre_std_original_px", "median_re_original_px"):
                result[key] = und.check(key, None, scale_reason)
            result["success_rate_original_px"] = {
                f"{t:g}px": und.check(f"success_rate_original_px[{t:g}px]", None, scale_reason) for t in self.thresholds
            }
        per: dict[str, dict[str, Any]] = {}
        for k, name in enumerate(self.landmark_names):
            row: dict[str, Any] = {
                "n_annotated": int(truth[:, k].sum()),
                "n_missing_predictions": int((truth[:, k] & ~pred[:, k]).sum()),
            }
            row.update(self._summary(err_in[:, k], truth[:, k], pred[:, k], "_px", und, name))
            if scaled:
                row.update(self._summary(err_or[:, k], truth[:, k], pred[:, k], "_original_px", und, name))
            per[name] = row
        result["per_landmark"] = per
        result["undefined"] = und.reasons
        result["notes"] = [
            "Radial error = Euclidean distance between predicted and true point; MRE is the mean over every "
            "evaluable point (equal to the original's mean over landmarks then images when nothing is skipped).",
            "Points whose ground truth is NaN are skipped and counted; NaN predictions are left out of MRE "
            "and count as failures in success rates.",
            "*_px values are at the model input resolution (the original's metric_landmarks); *_original_px "
            "apply the per-image scale to the original image resolution.",
        ]
        return result
