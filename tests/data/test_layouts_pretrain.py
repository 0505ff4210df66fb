"""PretrainImages: modality folder aliases, recursion, weights, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from visionfm.data.layouts import PretrainImages
from visionfm.errors import ConfigError, DataFormatError


def _img(path: Path, value: int = 50) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), (value, value, value)).save(path)


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    _img(tmp_path / "Fundus" / "b.png")
    _img(tmp_path / "Fundus" / "a.jpg")
    _img(tmp_path / "Fundus" / "nested" / "c.png")
    (tmp_path / "Fundus" / "notes.txt").write_text("not an image")
    _img(tmp_path / "Silt-Lamp" / "s.png")
    _img(tmp_path / "UltraSound" / "u1.png")
    _img(tmp_path / "UltraSound" / "u2.png")
    return tmp_path


def test_reads_aliases_recursively_in_sorted_order(tree: Path) -> None:
    ds = PretrainImages(tree, ["fundus", "SlitLamp", "Ultrasound"])
    rel = [(p.relative_to(tree).as_posix(), m) for p, m in ds.samples]
    assert rel == [
        ("Fundus/a.jpg", "Fundus"),
        ("Fundus/b.png", "Fundus"),
        ("Fundus/nested/c.png", "Fundus"),
        ("Silt-Lamp/s.png", "SlitLamp"),
        ("UltraSound/u1.png", "Ultrasound"),
        ("UltraSound/u2.png", "Ultrasound"),
    ]
    img, modality = ds[3]
    assert img.mode == "RGB" and modality == "SlitLamp"
    assert ds.modality_counts() == {"Fundus": 3, "SlitLamp": 1, "Ultrasound": 2}
    assert len(PretrainImages(tree, "Fundus", recursive=False)) == 2


def test_transform_receives_modality(tree: Path) -> None:
    ds = PretrainImages(tree, ["SiltLamp"], transform=lambda img, m: (img.size, m))
    assert ds[0] == ((6, 4), "SlitLamp")


def test_sample_weights(tree: Path) -> None:
    ds = PretrainImages(tree, ["Fundus", "Silt Lamp", "B-Ultrasound"])
    assert ds.sample_weights("uniform") == [1.0] * 6
    balanced = ds.sample_weights("balanced")
    assert balanced == pytest.approx([1 / 3] * 3 + [1.0] + [0.5] * 2)
    custom = ds.sample_weights({"fundus": 3.0, "SlitLamp": 0.0, "UltraSound": 1.0})
    assert custom == pytest.approx([1.0] * 3 + [0.0] + [0.5] * 2)
    with pytest.raises(ConfigError, match="'OCT', which is not among the loaded modalities"):
        ds.sample_weights({"Fundus": 1, "SlitLamp": 1, "Ultrasound": 1, "OCT": 1})
    with pytest.raises(ConfigError, match="no weight given for modality SlitLamp"):
        ds.sample_weights({"Fundus": 1, "Ultrasound": 1})
    with pytest.raises(ConfigError, match="weighting must be"):
        ds.sample_weights("random")


def test_missing_modality_lists_existing_folders(tree: Path) -> None:
    with pytest.raises(DataFormatError) as info:
        PretrainImages(tree, ["OCT"])
    text = str(info.value)
    assert str(tree) in text and "no folder for modality 'OCT'" in text
    assert "Fundus, Silt-Lamp, UltraSound" in text


def test_empty_modality_folder(tree: Path) -> None:
    (tree / "MRI").mkdir()
    (tree / "MRI" / "readme.txt").write_text("x")
    with pytest.raises(DataFormatError, match="MRI contain no images.*sub-folders found: Fundus, MRI"):
        PretrainImages(tree, ["MRI"])


def test_unknown_modality_name(tree: Path) -> None:
    with pytest.raises(ConfigError, match="unknown modality 'Xray'"):
        PretrainImages(tree, ["Xray"])


def test_skip_corrupt_image(tree: Path) -> None:
    (tree / "Fundus" / "a.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataFormatError, match=r"a\.jpg"):
        PretrainImages(tree, ["Fundus"])[0]
    ds = PretrainImages(tree, ["Fundus"], on_error="skip")
    img, _ = ds[0]
    assert img.size == (6, 4)
    assert ds.skipped_paths == {str(tree / "Fundus" / "a.jpg")}
