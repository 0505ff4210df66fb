"""Every `visionfm synth` task produces the reference layout and its matching reader loads it."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from visionfm.data.layouts import (
    ForecastingDataset,
    LandmarkDataset,
    PretrainImages,
    SegmentationDataset,
    VFMDataset,
)
from visionfm.data.modalities import MODALITY_NAMES

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _synth(task, dst, *extra):
    cmd = [sys.executable, "-m", "visionfm.cli.main", "synth", "--task", task, "--dst_dir", str(dst),
           "--num", "8", "--img_size", "64", "--seed", "0", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_pretrain_all_modalities(tmp_path):
    _synth("pretrain", tmp_path)
    ds = PretrainImages(tmp_path, list(MODALITY_NAMES))
    assert ds.modality_counts() == dict.fromkeys(MODALITY_NAMES, 8)
    img, modality = ds[len(ds) - 1]
    assert img.size == (64, 64) and modality == "UBM"


@pytest.mark.parametrize("task,folders,num_labels,width", [
    ("single_cls", ["FundusClassification"], 5, 1),
    ("multi_cls", ["FundusClassificationMulti", "OCTClassificationMulti"], None, 13),
    ("metric_reg", ["FundusRegression", "ExternalRegression"], None, 38),
])
def test_vfm_tasks(tmp_path, task, folders, num_labels, width):
    _synth(task, tmp_path)
    for folder in folders:
        for split in ("training", "test"):
            ds = VFMDataset(tmp_path / folder, split, num_labels=num_labels)
            assert len(ds) == 8 and ds.labels.shape == (8, width)
            img, labels, extras = ds[0]
            assert img.size == (64, 64) and labels.shape == (width,)
            assert extras["rel_path"].startswith(f"dataset_A/{split}/")
    if task == "single_cls":
        assert set(np.unique(ds.labels)) <= set(range(5)) and ds.label_kind == "class"
    if task == "multi_cls":
        assert ds.label_kind == "multihot"
        assert np.all(ds.labels[:, :5].sum(1) == 1)  # one DR grade per image
        assert np.array_equal(ds.labels[:, 5] == 1, ds.labels[:, 0] == 0)  # DR flag iff grade > 0


def test_segmentation(tmp_path):
    _synth("segmentation", tmp_path)
    ds = SegmentationDataset(tmp_path / "VesselSegmentation", "training", num_labels=4)
    img, mask, _ = ds[0]
    assert len(ds) == 8 and tuple(mask.shape) == (64, 64) and int(mask.max()) < 4 and int((mask == 1).sum()) > 0
    with pytest.raises(Exception, match="num_labels|id"):
        SegmentationDataset(tmp_path / "VesselSegmentation", "training", num_labels=2)[0]


@pytest.mark.parametrize("fmt", ["map", "points"])
def test_landmark(tmp_path, fmt):
    _synth("landmark", tmp_path, "--landmark_format", fmt)
    ds = LandmarkDataset(tmp_path / "LandmarkDetection", "test", num_landmarks=3)
    img, points, _ = ds[0]
    assert len(ds) == 8 and tuple(points.shape) == (3, 2)
    assert np.all((np.asarray(points) >= 0) & (np.asarray(points) < 64))


def test_forecasting(tmp_path):
    _synth("forecasting", tmp_path)
    ds = ForecastingDataset(tmp_path / "GlaucomaForecasting", "training")
    img, label, days, _ = ds[0]
    assert len(ds) == 8 and float(label) in (0.0, 1.0) and 30 <= int(days) <= 3650
