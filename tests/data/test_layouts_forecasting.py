"""ForecastingDataset: both label-file names, lenient separators, path resolution, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from visionfm.data.layouts import ForecastingDataset
from visionfm.errors import DataFormatError


def _img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)
    return path


def _write(root: Path, name: str, lines: list[str]) -> Path:
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _err(root: Path, **kwargs: object) -> str:
    with pytest.raises(DataFormatError) as info:
        ForecastingDataset(root, "training", **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_reads_both_names_and_resolves_paths(tmp_path: Path) -> None:
    _img(tmp_path / "imgs" / "a.png")
    absolute = _img(tmp_path / "elsewhere" / "b, with comma.png")
    _write(tmp_path, "training.txt", ["# path, label, days", "imgs/a.png, 1, 365", "",
                                      f"{absolute},0,12"])
    ds = ForecastingDataset(tmp_path, "train", max_days=6500)
    assert len(ds) == 2 and ds.labels.tolist() == [1, 0] and ds.days.tolist() == [365, 12]
    img, label, days, extras = ds[0]
    assert img.mode == "RGB" and label.dtype == torch.float32 and label.shape == () and label.item() == 1.0
    assert days.dtype == torch.int64 and days.item() == 365
    assert extras == {"img_path": str(tmp_path / "imgs/a.png"), "rel_path": "imgs/a.png"}
    assert ds.samples[1].path == absolute
    _write(tmp_path, "training_labels.txt", ["imgs/a.png,0,1"])
    assert ForecastingDataset(tmp_path, "training").label_file.name == "training_labels.txt"


def test_missing_label_file(tmp_path: Path) -> None:
    assert "expected training_labels.txt or training.txt" in _err(tmp_path)


def test_malformed_lines_name_file_and_line(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    cases = {
        "a.png, 1": "expected '<image path>, <label 0/1>, <days>'",
        "a.png, 2, 10": "label must be 0 or 1, got 2",
        "a.png, yes, 10": "label must be an integer, got 'yes'",
        "a.png, 1, 1.5": "days must be an integer, got '1.5'",
        "a.png, 1, -3": "days must be >= 0, got -3",
        "missing.png, 1, 3": "image 'missing.png' not found",
    }
    for bad, message in cases.items():
        label_file = _write(tmp_path, "training.txt", ["a.png, 0, 1", "# comment", bad])
        text = _err(tmp_path)
        assert text.startswith(f"{label_file}:3: ") and message in text, (bad, text)


def test_days_beyond_max_days(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    label_file = _write(tmp_path, "training.txt", ["a.png, 1, 6500"])
    text = _err(tmp_path, max_days=6500)
    assert text.startswith(f"{label_file}:1: days 6500") and "max_days=6500" in text


def test_skip_unreadable_image(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    _img(tmp_path / "ok.png")
    _write(tmp_path, "test.txt", ["bad.png, 1, 3", "ok.png, 0, 4"])
    ds = ForecastingDataset(tmp_path, "test", on_error="skip")
    assert ds[0][2].item() == 4 and ds.skipped_paths == {str(bad)}
