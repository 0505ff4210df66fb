"""VFMDataset: label parsing, datasets, splits, subject column and every malformed-line message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionfm.data.layouts import LabeledSample, VFMDataset
from visionfm.data.layouts.vfm import available_splits
from visionfm.errors import ConfigError, DataFormatError


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (5, 5), (9, 9, 9)).save(path)


def _dataset(root: Path, name: str, split: str, lines: list[str], images: list[str] | None = None) -> Path:
    folder = root / name
    for rel in images if images is not None else [f"{split}/{i}.png" for i in range(3)]:
        _img(folder / rel)
    (folder / f"{split}_labels.txt").write_text("\n".join(lines) + "\n")
    return folder / f"{split}_labels.txt"


def _err(root: Path, split: str = "training", **kwargs: object) -> str:
    with pytest.raises(DataFormatError) as info:
        VFMDataset(root, split, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_reads_classes_with_comments_blanks_and_subjects(tmp_path: Path) -> None:
    _dataset(tmp_path, "B_set", "training", ["# header from the README", "", "training/0.png;2;patient7",
                                             "training/1.png; 0 ", "  # another", "training/2.png;4;"])
    _dataset(tmp_path, "A_set", "training", ["training/0.png;1"], images=["training/0.png"])
    ds = VFMDataset(tmp_path, "train")
    assert [(s.dataset, s.rel_path, s.line) for s in ds.samples] == [
        ("A_set", "training/0.png", 1),
        ("B_set", "training/0.png", 3),
        ("B_set", "training/1.png", 4),
        ("B_set", "training/2.png", 6),
    ]
    assert isinstance(ds.samples[1], LabeledSample) and ds.samples[1].subject == "patient7"
    assert ds.samples[3].subject is None
    assert ds.label_kind == "class" and ds.labels.shape == (4, 1) and ds.labels.dtype == np.float32
    img, labels, extras = ds[1]
    assert img.mode == "RGB" and labels.dtype == torch.float32 and labels.tolist() == [2.0]
    assert extras == {"img_path": str(tmp_path / "B_set" / "training/0.png"), "rel_path": "B_set/training/0.png",
                      "dataset": "B_set", "subject": "patient7"}
    assert ds[3][2]["subject"] == ""
    assert len(VFMDataset(tmp_path, "training", datasets=["B_set"])) == 3


def test_multihot_and_continuous_kinds(tmp_path: Path) -> None:
    _dataset(tmp_path / "m", "d", "test", ["test/0.png;0, 0, 1", "test/1.png;1,0,1", "test/2.png;0,0,0"])
    ds = VFMDataset(tmp_path / "m", "test", num_labels=3)
    assert ds.label_kind == "multihot" and ds.num_labels == 3
    assert ds[0][1].shape == (3,)
    _dataset(tmp_path / "r", "d", "test", ["test/0.png;38.8,2.5", "test/1.png;1,2", "test/2.png;0.5,-1e3"])
    assert VFMDataset(tmp_path / "r", "test").label_kind == "continuous"


def test_root_may_be_one_dataset(tmp_path: Path) -> None:
    _dataset(tmp_path, "only", "val", ["val/0.png;1", "val/1.png;0", "val/2.png;1"])
    ds = VFMDataset(tmp_path / "only", "validation", num_labels=1)
    assert len(ds) == 3 and ds[0][2]["rel_path"] == "only/val/0.png"


def test_available_splits(tmp_path: Path) -> None:
    for name in ("a", "b"):
        _dataset(tmp_path, name, "training", ["training/0.png;1"])
        _dataset(tmp_path, name, "test", ["test/0.png;1"])
    _dataset(tmp_path, "a", "val", ["val/0.png;1"])
    assert available_splits(tmp_path) == ["training", "test"]
    assert VFMDataset.available_splits(tmp_path, datasets=["a"]) == ["training", "val", "test"]
    text = _err(tmp_path, "val")
    assert "missing val_labels.txt" in text and str(tmp_path / "b") in text
    assert "training_labels.txt, test_labels.txt" in text


def test_wrong_field_count(tmp_path: Path) -> None:
    label_file = _dataset(tmp_path, "d", "training", ["training/0.png;1", "training/1.png 1"])
    text = _err(tmp_path)
    assert text.startswith(f"{label_file}:2: ") and "found 1 field(s)" in text and "';'" in text
    _dataset(tmp_path, "d", "training", ["training/0.png;1;s;extra"])
    assert f"{label_file}:1: " in _err(tmp_path) and "found 4 field(s)" in _err(tmp_path)


def test_non_number_label(tmp_path: Path) -> None:
    label_file = _dataset(tmp_path, "d", "training", ["# c", "training/0.png;1,x,0"])
    text = _err(tmp_path)
    assert text.startswith(f"{label_file}:2: ") and "label 2 is 'x', not a number" in text
    _dataset(tmp_path, "d", "training", ["training/0.png;1,,0"])
    assert "label 2 is empty" in _err(tmp_path)
    _dataset(tmp_path, "d", "training", ["training/0.png;nan"])
    assert "finite" in _err(tmp_path)


def test_label_count_mismatch(tmp_path: Path) -> None:
    label_file = _dataset(tmp_path, "d", "training", ["training/0.png;0,1,0", "training/1.png;0,1"])
    text = _err(tmp_path)
    assert text.startswith(f"{label_file}:2: ") and f"expected 3 label(s) as on {label_file}:1, found 2" in text
    _dataset(tmp_path, "d", "training", ["training/0.png;0,1,0"])
    assert f"{label_file}:1: expected 13 labels (num_labels), found 3" in _err(tmp_path, num_labels=13)


def test_class_id_out_of_range(tmp_path: Path) -> None:
    label_file = _dataset(tmp_path, "d", "training", ["training/0.png;0", "training/1.png;5", "training/2.png;1"])
    text = _err(tmp_path, num_labels=5)
    assert text.startswith(f"{label_file}:2: ") and "class id 5 is out of range for num_labels=5" in text
    assert len(VFMDataset(tmp_path, "training", num_labels=6)) == 3
    text = _err(tmp_path, num_labels=1)
    assert f"{label_file}:2: " in text and "binary task: ids must be 0 or 1" in text
    _dataset(tmp_path, "d", "training", ["training/0.png;-1"])
    assert "class id -1" in _err(tmp_path, num_labels=3)
    _dataset(tmp_path, "d", "training", ["training/0.png;2.5"])
    assert "one integer class id" in _err(tmp_path, num_labels=4)


def test_missing_image_is_reported_eagerly(tmp_path: Path) -> None:
    label_file = _dataset(tmp_path, "d", "training", ["training/0.png;1", "training/9.png;0", "training/8.png;0"])
    text = _err(tmp_path)
    assert text.startswith(f"{label_file}:2: image 'training/9.png' not found")
    assert "1 more listed images are missing too" in text


def test_unknown_dataset_and_empty_file(tmp_path: Path) -> None:
    _dataset(tmp_path, "d", "training", ["# only a comment"])
    assert "no samples" in _err(tmp_path)
    text = _err(tmp_path, datasets=["nope"])
    assert "dataset folder(s) nope not found; available: d" in text
    with pytest.raises(ConfigError, match="unknown split"):
        VFMDataset(tmp_path, "dev")


def test_corrupt_image_fail_and_skip(tmp_path: Path) -> None:
    _dataset(tmp_path, "d", "training", ["training/0.png;0", "training/1.png;1", "training/2.png;2"])
    bad = tmp_path / "d" / "training" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataFormatError, match=r"1\.png: .*(corrupt|not a readable)"):
        VFMDataset(tmp_path, "training")[1]
    ds = VFMDataset(tmp_path, "training", on_error="skip")
    assert ds[1][1].tolist() == [2.0]
    assert ds.skipped_paths == {str(bad)}
