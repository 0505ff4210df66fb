"""Landmark layout: ``<root>/<dataset>/<split>/images/<stem>.*`` + ``labels/<stem>.npy`` (reference §2.6).

A label array is either heatmaps ``[H, W, K]`` (as the original expected) or points ``[K, 2]`` in
(x, y) pixel coordinates of the original image. Heatmaps are reduced to points at load time: the
original resized them with NEAREST and cast them to int64, which erased soft Gaussian heatmaps and
most single-pixel targets (item 15). Returning points lets the training code rebuild targets at any
resolution after geometric augmentation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from visionfm.data.images import load_image
from visionfm.data.layouts.segmentation import PairedDataset
from visionfm.errors import DataFormatError

__all__ = ["LandmarkDataset", "heatmaps_to_points", "load_landmark_array"]

logger = logging.getLogger("visionfm.data")


def load_landmark_array(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a numeric ``.npy`` safely: pickled / object arrays are refused, never executed."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            magic = handle.read(6)
    except FileNotFoundError:
        raise DataFormatError("landmark file not found", path) from None
    except OSError as exc:
        raise DataFormatError(f"cannot read .npy file ({exc.strerror or exc})", path) from None
    if magic != b"\x93NUMPY":
        raise DataFormatError("not a .npy file (no NumPy header); save labels with np.save", path)
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickle" in str(exc).lower():
            raise DataFormatError(
                "refusing to load a pickled / object array (unsafe); save plain numeric arrays, e.g. "
                "np.save(path, points.astype(np.float32))",
                path,
            ) from None
        raise DataFormatError(f"not a valid .npy file ({exc})", path) from None
    except (OSError, EOFError) as exc:
        raise DataFormatError(f"cannot read .npy file ({exc})", path) from None
    if not isinstance(arr, np.ndarray):
        raise DataFormatError("expected a single array saved with np.save (.npy), not an archive", path)
    if arr.dtype.kind not in "biuf":
        raise DataFormatError(f"expected a numeric array, got dtype {arr.dtype}", path)
    return arr


def heatmaps_to_points(heatmaps: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """``[H, W, K]`` → points ``[K, 2]`` (x, y) at each channel's maximum, plus the empty channels.

    Ties (a plateau, e.g. a binary disc) resolve to the centroid of the maximal pixels. A channel
    with no positive value has no landmark: its point is NaN and its index is returned.
    """
    k = heatmaps.shape[2]
    points = np.full((k, 2), np.nan, dtype=np.float32)
    empty: list[int] = []
    for channel in range(k):
        plane = heatmaps[:, :, channel]
        peak = plane.max()
        if not peak > 0:
            empty.append(channel)
            continue
        ys, xs = np.nonzero(plane == peak)
        points[channel] = (xs.mean(), ys.mean())
    return points, empty


class LandmarkDataset(PairedDataset):
    """Images with K landmark points.

    Args:
        root: folder of dataset folders, or one dataset folder.
        split: ``training`` (alias ``train``), ``val`` or ``test``.
        num_landmarks: K, checked against every label array.
        joint_transform: called as ``joint_transform(image, points)``; must return ``(image, points)``.
        datasets: dataset folder names to use (default all, sorted).
        on_error: ``"fail"`` or ``"skip"`` for unreadable images or malformed label arrays.

    A sample is ``(image, points, extras)``: PIL RGB image; float32 ``[K, 2]`` (x, y) pixel
    coordinates, NaN for a missing landmark, wrapped as ``torchvision.tv_tensors.KeyPoints`` (canvas
    = image size) so v2 geometric transforms move the points with the image. ``missing_points`` maps
    a label path to its empty heatmap channels (recorded as samples are loaded, per process).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        num_landmarks: int,
        joint_transform: Callable[[Any, Any], tuple[Any, Any]] | None = None,
        datasets: Sequence[str] | None = None,
        on_error: str = "fail",
    ) -> None:
        super().__init__(root, split, "num_landmarks", num_landmarks, (".npy",), joint_transform, datasets, on_error)
        self.num_landmarks = self.count
        self.missing_points: dict[str, list[int]] = {}

    def _points(self, arr: np.ndarray, path: Path, width: int, height: int) -> np.ndarray:
        k = self.num_landmarks
        if arr.ndim == 3:
            if arr.shape[2] != k:
                hint = ""
                if arr.shape[0] == k and arr.shape[1:] == (height, width):
                    hint = "; it looks channel-first [K, H, W]: transpose to [H, W, K]"
                raise DataFormatError(
                    f"heatmaps have shape {list(arr.shape)}: expected [H, W, K] with K={k} landmarks{hint}", path
                )
            if arr.shape[:2] != (height, width):
                raise DataFormatError(
                    f"heatmaps are {arr.shape[1]}x{arr.shape[0]} (WxH) but the image is {width}x{height}", path
                )
            points, empty = heatmaps_to_points(arr.astype(np.float32, copy=False))
            if empty:
                if str(path) not in self.missing_points:
                    logger.warning("%s: heatmap channel(s) %s have no positive value; landmark set to NaN",
                                   path, empty)
                self.missing_points[str(path)] = empty
            return points
        if arr.ndim == 2:
            if arr.shape != (k, 2):
                raise DataFormatError(
                    f"points have shape {list(arr.shape)}: expected [K, 2] = [{k}, 2] (x, y) pixel coordinates",
                    path,
                )
            points = arr.astype(np.float32)
            if np.isinf(points).any():
                raise DataFormatError("points contain infinite values (use NaN for a missing landmark)", path)
            outside = ~np.isnan(points).any(axis=1) & (
                (points[:, 0] < 0) | (points[:, 0] > width) | (points[:, 1] < 0) | (points[:, 1] > height)
            )
            if outside.any():
                i = int(np.argmax(outside))
                raise DataFormatError(
                    f"landmark {i} at (x={points[i, 0]:g}, y={points[i, 1]:g}) lies outside the "
                    f"{width}x{height} image; points are (x, y) pixel coordinates",
                    path,
                )
            return points
        raise DataFormatError(
            f"label array has shape {list(arr.shape)}: expected heatmaps [H, W, K] or points [K, 2] with K={k}",
            path,
        )

    def _load(self, index: int) -> tuple[Any, Any, dict[str, str]]:
        sample = self.samples[index]
        image = load_image(sample.image)
        points = self._points(load_landmark_array(sample.label), sample.label, image.width, image.height)
        target: Any = tv_tensors.KeyPoints(torch.from_numpy(points), canvas_size=(image.height, image.width))
        if self.joint_transform is not None:
            image, target = self.joint_transform(image, target)
        extras = {
            "img_path": str(sample.image),
            "label_path": str(sample.label),
            "rel_path": sample.rel_path,
            "dataset": sample.dataset,
        }
        return image, target, extras
