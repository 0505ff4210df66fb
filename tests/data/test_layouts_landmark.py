"""LandmarkDataset: heatmaps and point lists, safe loading, shape errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionfm.data.layouts import LandmarkDataset, heatmaps_to_points
from visionfm.errors import DataFormatError

W, H, K = 10, 8, 3


def _sample(root: Path, stem: str, label: object, image_ext: str = ".png") -> Path:
    (root / "training" / "images").mkdir(parents=True, exist_ok=True)
    (root / "training" / "labels").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H)).save(root / "training" / "images" / f"{stem}{image_ext}")
    path = root / "training" / "labels" / f"{stem}.npy"
    if isinstance(label, np.ndarray):
        np.save(path, label, allow_pickle=label.dtype == object)
    else:
        path.write_bytes(label)  # type: ignore[arg-type]
    return path


def _soft_heatmaps() -> np.ndarray:
    ys, xs = np.mgrid[0:H, 0:W]
    maps = np.zeros((H, W, K), dtype=np.float32)
    for k, (x, y) in enumerate([(2, 3), (7, 1), (5, 6)]):
        maps[:, :, k] = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 4.0) * 0.6  # peaks < 1: would truncate to 0
    return maps


def test_soft_heatmaps_become_points(tmp_path: Path) -> None:
    _sample(tmp_path, "a", _soft_heatmaps(), ".jpg")
    ds = LandmarkDataset(tmp_path, "train", num_landmarks=K)
    img, points, extras = ds[0]
    assert img.size == (W, H) and isinstance(points, torch.Tensor) and points.dtype == torch.float32
    assert points.tolist() == [[2.0, 3.0], [7.0, 1.0], [5.0, 6.0]]
    assert extras["rel_path"] == f"{tmp_path.name}/training/images/a.jpg"


def test_point_lists_and_joint_transform(tmp_path: Path) -> None:
    pts = np.array([[1.5, 2.0], [9.0, 7.0], [np.nan, np.nan]])
    _sample(tmp_path, "a", pts)
    ds = LandmarkDataset(tmp_path, "training", K, joint_transform=lambda im, p: (im.size, p * 2))
    size, doubled, _ = ds[0]
    assert size == (W, H)
    np.testing.assert_allclose(doubled.numpy(), pts * 2)


def test_empty_channel_gives_nan_and_is_counted(tmp_path: Path) -> None:
    maps = np.zeros((H, W, K), dtype=np.uint8)
    maps[4, 6, 0] = 1
    maps[1:3, 1:3, 2] = 1  # plateau: centroid
    label = _sample(tmp_path, "a", maps)
    ds = LandmarkDataset(tmp_path, "training", K)
    points = ds[0][1].numpy()
    assert points[0].tolist() == [6.0, 4.0] and np.isnan(points[1]).all() and points[2].tolist() == [1.5, 1.5]
    assert ds.missing_points == {str(label): [1]}
    assert heatmaps_to_points(maps)[1] == [1]


def _error(root: Path, k: int = K) -> str:
    with pytest.raises(DataFormatError) as info:
        LandmarkDataset(root, "training", k)[0]
    return str(info.value)


def test_wrong_k_and_channel_first_hint(tmp_path: Path) -> None:
    label = _sample(tmp_path, "a", np.zeros((H, W, 2)))
    text = _error(tmp_path)
    assert text.startswith(f"{label}: heatmaps have shape [8, 10, 2]") and "K=3" in text
    _sample(tmp_path, "a", np.zeros((K, H, W)))
    assert "channel-first" in _error(tmp_path)
    _sample(tmp_path, "a", np.zeros((4, 2)))
    assert "points have shape [4, 2]: expected [K, 2] = [3, 2]" in _error(tmp_path)


def test_heatmap_size_and_shape_errors(tmp_path: Path) -> None:
    _sample(tmp_path, "a", np.zeros((H + 1, W, K)))
    assert "heatmaps are 10x9 (WxH) but the image is 10x8" in _error(tmp_path)
    _sample(tmp_path, "a", np.zeros((H,)))
    assert "expected heatmaps [H, W, K] or points [K, 2]" in _error(tmp_path)
    _sample(tmp_path, "a", np.array([[1.0, 2.0], [50.0, 1.0], [3.0, 3.0]]))
    assert "landmark 1 at (x=50, y=1) lies outside the 10x8 image" in _error(tmp_path)


def test_pickles_and_junk_are_refused(tmp_path: Path) -> None:
    label = _sample(tmp_path, "a", np.array([{"x": 1}, None], dtype=object))
    text = _error(tmp_path)
    assert text.startswith(f"{label}: refusing to load a pickled / object array")
    _sample(tmp_path, "a", pickle.dumps([1, 2, 3]))
    assert "not a .npy file" in _error(tmp_path)


def test_missing_npy_label(tmp_path: Path) -> None:
    _sample(tmp_path, "a", np.zeros((K, 2)))
    Image.new("RGB", (W, H)).save(tmp_path / "training" / "images" / "b.png")
    with pytest.raises(DataFormatError, match=r"no label for image b\.png: expected .*labels/b with extension \.npy"):
        LandmarkDataset(tmp_path, "training", K)
