"""visionfm synth: the val splits of segmentation / landmark / forecasting and the finetune ImageFolder tree
are read by the matching loaders, and the training commands select on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionfm.cli.main import main as cli_main
from visionfm.data.layouts import ForecastingDataset, ImageFolderDataset, LandmarkDataset, SegmentationDataset
from visionfm.data.layouts.forecasting import forecasting_label_file
from visionfm.data.synth import FINETUNE_CLASSES, FINETUNE_GROUP, TASKS, generate, split_sizes

DS = "dataset_A"


def test_split_sizes_have_val_for_every_labelled_task():
    for task in TASKS:
        sizes = split_sizes(task, 12)
        if task == "pretrain":
            assert list(sizes) == [""]
            continue
        assert sizes["val"] == 3 and sorted(sizes.values()) == [3, 12, 12], (task, sizes)
    assert split_sizes("segmentation", 3)["val"] == 2  # never fewer than two
    assert list(split_sizes("finetune", 4)) == ["train", "val", "test"]  # the RETFound split names


def test_segmentation_val_is_read_by_the_loader(tmp_path):
    s = generate("segmentation", tmp_path, num=8, img_size=48, seed=0, num_classes=3)
    assert s["counts"]["VesselSegmentation/val"] == 2
    root = tmp_path / "VesselSegmentation"
    val = SegmentationDataset(root, "val", num_labels=3)
    assert len(val) == 2 and [x.rel_path for x in val.samples] == [f"{DS}/val/images/0000000{i}.png" for i in (0, 1)]
    img, mask, extras = val[1]
    assert img.size == (48, 48) and tuple(mask.shape) == (48, 48)
    assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 1, 2} and int((np.asarray(mask) == 1).sum()) > 0
    # val is drawn from its own generator: none of its images repeats a training image
    train = {p.read_bytes() for p in (root / DS / "training" / "images").iterdir()}
    assert not any(p.read_bytes() in train for p in (root / DS / "val" / "images").iterdir())


@pytest.mark.parametrize("fmt", ["map", "points"])
def test_landmark_val_is_read_by_the_loader(tmp_path, fmt):
    generate("landmark", tmp_path, num=9, img_size=48, seed=2, landmark_format=fmt)
    val = LandmarkDataset(tmp_path / "LandmarkDetection", "val", num_landmarks=3)
    assert len(val) == 2
    _, points, extras = val[0]
    pts = np.asarray(points)
    assert pts.shape == (3, 2) and np.isfinite(pts).all() and ((pts >= 0) & (pts < 48)).all()
    assert extras["rel_path"] == f"{DS}/val/images/00000000.png"


def test_forecasting_val_is_read_by_the_loader(tmp_path):
    generate("forecasting", tmp_path, num=16, img_size=32, seed=0)
    root = tmp_path / "GlaucomaForecasting"
    assert forecasting_label_file(root, "val") == root / "val.txt"
    val = ForecastingDataset(root, "val", max_days=6500)
    assert len(val) == 4 and set(val.labels.tolist()) <= {0, 1}
    assert ((val.days >= 30) & (val.days <= 3650)).all()
    img, label, days, extras = val[3]
    assert img.size == (32, 32) and extras["rel_path"] == "val/00000003.png" and int(days) == val.days[3]


def test_finetune_imagefolder_tree(tmp_path, capsys):
    rc = cli_main(["synth", "--task", "finetune", "--output_dir", str(tmp_path), "--num", "10", "--img_size", "32",
                   "--seed", "1"])
    assert rc == 0 and f"{FINETUNE_GROUP}/val: 2 images" in capsys.readouterr().out
    root = tmp_path / FINETUNE_GROUP
    assert sorted(p.name for p in root.iterdir()) == ["test", "train", "val"]
    for split, n in {"train": 10, "val": 2, "test": 10}.items():
        ds = ImageFolderDataset(root, split)
        assert len(ds) == n
        files = sorted(p for p in (root / split).rglob("*.png"))
        assert len(files) == n and all(p.parent.parent.name == split for p in files)
        for path, label in ds.samples:  # balanced grades: image i has grade i mod 5
            assert label == int(path.stem) % 5 and path.parent.name == ds.classes[label]
    # train and test hold every class; folders sort into the grade order (the RETFound APTOS2019 order)
    assert ImageFolderDataset(root, "train").classes == list(FINETUNE_CLASSES)
    assert ImageFolderDataset(root, "test").targets.count(4) == 2
    assert ImageFolderDataset(root, "val").classes == list(FINETUNE_CLASSES[:2])  # no empty class folder
    img, label, extras = ImageFolderDataset(root, "train")[5]  # sorted by class: 0, 5, 1, 6, 2, 7, ...
    assert img.size == (32, 32) and label == 2 and extras["rel_path"] == "train/cmoderatedr/00000007.png"
    with Image.open(root / "val" / "anodr" / "00000000.png") as im:
        assert im.mode == "RGB"


def test_finetune_tree_is_accepted_by_finetune_classes_and_torchvision(tmp_path):
    from torchvision.datasets import ImageFolder

    from visionfm.data.layouts import retfound_class_order
    from visionfm.tasks.finetune import resolve_classes

    generate("finetune", tmp_path, num=5, img_size=32, seed=0)
    root = tmp_path / FINETUNE_GROUP
    assert resolve_classes(root, None, "auto") == list(FINETUNE_CLASSES)
    assert resolve_classes(root, None, "APTOS2019") == retfound_class_order("APTOS2019") == list(FINETUNE_CLASSES)
    tv = ImageFolder(str(root / "train"))
    assert tv.classes == list(FINETUNE_CLASSES) and len(tv) == 5


def _metrics(run: Path) -> dict:
    found = sorted(run.rglob("metrics.json"))
    assert found, f"no metrics.json under {run}"
    return json.loads(found[0].read_text())


@pytest.mark.slow
def test_train_seg_and_landmark_select_on_val(tmp_path):
    generate("segmentation", tmp_path / "d", num=4, img_size=32, seed=0, num_classes=2)
    generate("landmark", tmp_path / "d", num=4, img_size=32, seed=0)
    common = ["--pretrained_weights", "random", "--arch", "vit_tiny", "--input_size", "32", "--epochs", "1",
              "--batch_size_per_gpu", "4", "--num_workers", "0", "--device", "cpu", "--output_dir", str(tmp_path / "o")]
    assert cli_main(["train-seg", "--name", "seg", "--data_path", str(tmp_path / "d" / "VesselSegmentation"),
                     "--num_labels", "2", *common]) == 0
    assert _metrics(tmp_path / "o" / "seg")["selection"]["split"] == "val"
    assert cli_main(["train-landmark", "--name", "lmk", "--data_path", str(tmp_path / "d" / "LandmarkDetection"),
                     "--num_labels", "3", *common]) == 0
    assert _metrics(tmp_path / "o" / "lmk")["selection"]["split"] == "val"


@pytest.mark.slow
def test_train_forecast_and_finetune_select_on_val(tmp_path):
    generate("forecasting", tmp_path / "d", num=8, img_size=32, seed=0)
    generate("finetune", tmp_path / "d", num=5, img_size=32, seed=0)
    common = ["--pretrained_weights", "random", "--arch", "vit_tiny", "--input_size", "32", "--epochs", "1",
              "--batch_size_per_gpu", "4", "--num_workers", "0", "--device", "cpu", "--output_dir", str(tmp_path / "o"),
              "--report_n_boot", "0"]
    assert cli_main(["train-forecast", "--name", "fc", "--data_path", str(tmp_path / "d" / "GlaucomaForecasting"),
                     *common]) == 0
    best = json.loads((tmp_path / "o" / "fc" / "checkpoint_best.json").read_text())
    assert json.dumps(best).count('"selection_split": "val"') >= 1, best
    assert cli_main(["finetune", "--name", "ft", "--data_path", str(tmp_path / "d" / FINETUNE_GROUP), *common]) == 0
    text = "\n".join(p.read_text() for p in (tmp_path / "o" / "ft").rglob("*.json"))
    assert '"selection_split": "val"' in text
    assert '"anodr"' in text and '"eproliferativedr"' in text  # the class names were recorded
