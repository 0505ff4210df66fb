"""ImageFolderDataset: alphabetical and explicit class orders, filtering, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from visionfm.data.layouts import RETFOUND_CLASS_ORDERS, ImageFolderDataset, retfound_class_order
from visionfm.errors import ConfigError, DataFormatError


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    for rel in ["train/cglaucoma/1.png", "train/anormal/2.jpg", "train/anormal/1.PNG",
                "train/bsuspectglaucoma/x.bmp", "test/anormal/t.png", "test/cglaucoma/t.png"]:
        _img(tmp_path / rel)
    (tmp_path / "train" / "anormal" / "Thumbs.db").write_bytes(b"junk")
    (tmp_path / "train" / "anormal" / ".DS_Store").write_bytes(b"junk")
    return tmp_path


def test_alphabetical_classes_and_samples(tree: Path) -> None:
    ds = ImageFolderDataset(tree, "training")
    assert ds.classes == ["anormal", "bsuspectglaucoma", "cglaucoma"]
    assert [(p.name, t) for p, t in ds.samples] == [("1.PNG", 0), ("2.jpg", 0), ("x.bmp", 1), ("1.png", 2)]
    assert ds.targets == [0, 0, 1, 2]
    img, label, extras = ds[2]
    assert img.mode == "RGB" and label == 1
    assert extras == {"img_path": str(tree / "train/bsuspectglaucoma/x.bmp"),
                      "rel_path": "train/bsuspectglaucoma/x.bmp"}
    assert ImageFolderDataset.available_splits(tree) == ["train", "test"]


def test_class_order_overrides_and_may_list_absent_classes(tree: Path) -> None:
    order = retfound_class_order("papila")
    ds = ImageFolderDataset(tree, "test", class_order=["cglaucoma", "bsuspectglaucoma", "anormal"])
    assert ds.classes == ["cglaucoma", "bsuspectglaucoma", "anormal"]
    assert [(p.parent.name, t) for p, t in ds.samples] == [("cglaucoma", 0), ("anormal", 2)]
    assert ImageFolderDataset(tree, "test", class_order=order).targets == [0, 2]


def test_unlisted_class_folder_is_an_error(tree: Path) -> None:
    with pytest.raises(DataFormatError) as info:
        ImageFolderDataset(tree, "train", class_order=["anormal", "cglaucoma"])
    text = str(info.value)
    assert str(tree / "train") in text and "class folder(s) not in class_order: bsuspectglaucoma" in text


def test_missing_split_and_bad_orders(tree: Path) -> None:
    with pytest.raises(DataFormatError, match="split folder 'val' not found; splits present: train, test"):
        ImageFolderDataset(tree, "val")
    with pytest.raises(ConfigError, match="more than once"):
        ImageFolderDataset(tree, "test", class_order=["anormal", "anormal", "cglaucoma"])
    with pytest.raises(ConfigError, match="unknown RETFound benchmark"):
        retfound_class_order("Retinal")


def test_retfound_orders() -> None:
    assert len(RETFOUND_CLASS_ORDERS["JSIEC"]) == 39 and RETFOUND_CLASS_ORDERS["JSIEC"][1] == "20.Massive hard exudates"
    assert retfound_class_order("IDRiD")[-1] == "eproDR"
    assert retfound_class_order("aptos2019") == retfound_class_order("MESSIDOR2")


def test_corrupt_image_skip(tree: Path) -> None:
    bad = tree / "train" / "anormal" / "1.PNG"
    bad.write_bytes(b"nope")
    ds = ImageFolderDataset(tree, "train", on_error="skip")
    assert ds[0][2]["rel_path"] == "train/anormal/2.jpg" and ds.skipped_paths == {str(bad)}
