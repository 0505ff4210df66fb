"""SegmentationDataset: stem matching, id-preserving masks, binary 255 masks, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionfm.data.layouts import SegmentationDataset
from visionfm.errors import DataFormatError


def _pair(split_dir: Path, stem: str, mask: np.ndarray, image_ext: str = ".jpg", size: tuple[int, int] | None = None,
          palette: bool = False) -> Path:
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    (split_dir / "labels").mkdir(parents=True, exist_ok=True)
    h, w = mask.shape
    Image.new("RGB", size or (w, h), (120, 30, 30)).save(split_dir / "images" / f"{stem}{image_ext}")
    label = Image.fromarray(mask.astype(np.uint8))
    if palette:
        label = Image.new("P", (w, h))
        label.putdata(mask.flatten().tolist())
        label.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200, 90, 90, 90] + [0] * (256 * 3 - 12))
    path = split_dir / "labels" / f"{stem}.png"
    label.save(path)
    return path


MASK = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [0, 0, 3, 3]])


def test_reads_datasets_with_stem_matching_and_palette(tmp_path: Path) -> None:
    _pair(tmp_path / "A" / "training", "img.images.1", MASK, ".jpg", palette=True)  # "images" in the name
    _pair(tmp_path / "B" / "training", "x", MASK % 2, ".png")
    ds = SegmentationDataset(tmp_path, "train", num_labels=4)
    assert len(ds) == 2
    img, mask, extras = ds[0]
    assert img.size == (4, 3) and isinstance(mask, torch.Tensor) and mask.dtype == torch.int64
    np.testing.assert_array_equal(mask.numpy(), MASK)
    assert extras["rel_path"] == "A/training/images/img.images.1.jpg" and extras["dataset"] == "A"
    assert extras["label_path"] == str(tmp_path / "A/training/labels/img.images.1.png")
    assert len(SegmentationDataset(tmp_path, "training", 4, datasets=["B"])) == 1


def test_root_may_be_one_dataset_and_joint_transform(tmp_path: Path) -> None:
    _pair(tmp_path / "test", "a", MASK, ".png")
    ds = SegmentationDataset(tmp_path, "test", 4, joint_transform=lambda im, m: (im.size, m.sum().item()))
    assert ds[0][:2] == ((4, 3), int(MASK.sum()))


def test_binary_255_masks_map_to_one(tmp_path: Path) -> None:
    _pair(tmp_path / "test", "a", np.array([[0, 255], [255, 0]]), ".png")
    _, mask, _ = SegmentationDataset(tmp_path, "test", num_labels=1)[0]
    assert mask.tolist() == [[0, 1], [1, 0]]


def test_ids_out_of_range_name_the_max(tmp_path: Path) -> None:
    label = _pair(tmp_path / "test", "a", MASK, ".png")
    with pytest.raises(DataFormatError) as info:
        SegmentationDataset(tmp_path, "test", num_labels=3)[0]
    assert str(info.value).startswith(f"{label}: mask contains class id 3, out of range for num_labels=3")
    with pytest.raises(DataFormatError, match="binary masks must hold 0/1"):
        SegmentationDataset(tmp_path, "test", num_labels=1)[0]


def test_missing_label_is_reported_at_construction(tmp_path: Path) -> None:
    _pair(tmp_path / "test", "a", MASK)
    Image.new("RGB", (4, 3)).save(tmp_path / "test" / "images" / "orphan.png")
    with pytest.raises(DataFormatError) as info:
        SegmentationDataset(tmp_path, "test", 4)
    text = str(info.value)
    assert "orphan.png" in text and "no label for image orphan.png" in text and "labels/orphan" in text


def test_size_mismatch_names_both_sizes(tmp_path: Path) -> None:
    _pair(tmp_path / "test", "a", MASK, ".png", size=(8, 6))
    with pytest.raises(DataFormatError, match=r"a\.png: mask is 4x3 \(WxH\) but its image .* is 8x6"):
        SegmentationDataset(tmp_path, "test", 4)[0]


def test_colour_mask_and_skip(tmp_path: Path) -> None:
    _pair(tmp_path / "test", "a", MASK, ".png")
    _pair(tmp_path / "test", "b", MASK, ".png")
    colour = tmp_path / "test" / "labels" / "a.png"
    Image.new("RGB", (4, 3), (255, 0, 0)).save(colour)
    with pytest.raises(DataFormatError, match="grayscale"):
        SegmentationDataset(tmp_path, "test", 4)[0]
    ds = SegmentationDataset(tmp_path, "test", 4, on_error="skip")
    assert ds[0][2]["rel_path"].endswith("b.png") and ds.skipped_paths == {str(colour)}


def test_missing_labels_folder(tmp_path: Path) -> None:
    (tmp_path / "D" / "test" / "images").mkdir(parents=True)
    with pytest.raises(DataFormatError, match="missing folder labels/"):
        SegmentationDataset(tmp_path, "test", 2)
