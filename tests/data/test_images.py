"""Image / mask decoding, label-line reading and the shared on_error policy."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionfm.data.images import (
    IMAGE_EXTENSIONS,
    SampleDataset,
    is_image_file,
    list_images,
    load_image,
    load_mask,
    read_label_lines,
    resolve_split,
)
from visionfm.errors import ConfigError, DataFormatError


def _save(path: Path, img: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def test_extensions_are_case_insensitive() -> None:
    assert {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"} == set(IMAGE_EXTENSIONS)
    assert is_image_file("a/B.PNG") and is_image_file("x.JpEg") and is_image_file("scan.tiff")
    assert not is_image_file("notes.txt") and not is_image_file("labels.npy") and not is_image_file("png")


def test_list_images_recursive_sorted_filters_hidden_and_non_images(tmp_path: Path) -> None:
    for rel in ["b.png", "a/2.jpg", "a/10.JPG", ".hidden.png", "._fork.jpg", ".git/x.png", "readme.txt"]:
        target = tmp_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"")
    names = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert names == ["a/10.JPG", "a/2.jpg", "b.png"]
    assert [p.name for p in list_images(tmp_path, recursive=False)] == ["b.png"]


def test_load_image_converts_modes_to_rgb(tmp_path: Path) -> None:
    gray = load_image(_save(tmp_path / "g.png", Image.new("L", (5, 4), 77)))
    assert gray.mode == "RGB" and gray.size == (5, 4) and gray.getpixel((0, 0)) == (77, 77, 77)
    rgba = load_image(_save(tmp_path / "a.png", Image.new("RGBA", (3, 3), (1, 2, 3, 0))))
    assert rgba.mode == "RGB" and rgba.getpixel((1, 1)) == (1, 2, 3)
    wide = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    out = load_image(_save(tmp_path / "w.png", wide))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    half = load_image(_save(tmp_path / "h.png", Image.fromarray(np.full((4, 4), 257 * 100, dtype=np.uint16))))
    assert half.getpixel((0, 0)) == (100, 100, 100)  # scaled, not clipped at 255


def test_load_image_missing_names_path(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"nope\.png: image file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(DataFormatError, match="found a directory"):
        load_image(tmp_path)


def test_truncated_jpeg_fails_with_its_path(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    good = _save(tmp_path / "good.jpg", Image.fromarray(noise))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataFormatError) as info:
        load_image(bad)
    assert str(bad) in str(info.value) and "truncated" in str(info.value)


def test_garbage_file_is_not_an_image(tmp_path: Path) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not a png")
    with pytest.raises(DataFormatError, match=r"junk\.png: not a readable image"):
        load_image(junk)


def test_decompression_bomb_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(tmp_path / "big.png", Image.new("RGB", (40, 40)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataFormatError, match=r"big\.png: image is too large.*decompression bomb"):
        load_image(path)


def test_mask_palette_keeps_indices(tmp_path: Path) -> None:
    ids = np.array([[0, 1, 2], [3, 2, 1]], dtype=np.uint8)
    img = Image.new("P", (3, 2))
    img.putdata(ids.flatten().tolist())
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12))
    path = _save(tmp_path / "pal.png", img)
    with Image.open(path) as stored:
        assert stored.mode == "P"
    mask = load_mask(path)
    assert mask.dtype == np.int64 and mask.shape == (2, 3)
    np.testing.assert_array_equal(mask, ids)  # not the luminance of the palette colours


def test_mask_mode_1_gives_zero_one(tmp_path: Path) -> None:
    bits = Image.new("1", (4, 2), 0)
    bits.putpixel((3, 1), 1)
    mask = load_mask(_save(tmp_path / "b.png", bits))
    assert mask.tolist() == [[0, 0, 0, 0], [0, 0, 0, 1]]


def test_mask_grayscale_16bit_and_gray_rgb(tmp_path: Path) -> None:
    ids = np.array([[0, 4], [2, 1]], dtype=np.uint8)
    np.testing.assert_array_equal(load_mask(_save(tmp_path / "l.png", Image.fromarray(ids))), ids)
    wide = np.array([[0, 300], [1000, 7]], dtype=np.uint16)
    np.testing.assert_array_equal(load_mask(_save(tmp_path / "w.png", Image.fromarray(wide))), wide)
    gray_rgb = np.repeat(ids[..., None], 3, axis=2)
    np.testing.assert_array_equal(load_mask(_save(tmp_path / "g.png", Image.fromarray(gray_rgb))), ids)


def test_colour_mask_is_refused(tmp_path: Path) -> None:
    rgb = np.zeros((3, 3, 3), dtype=np.uint8)
    rgb[1, 2] = (255, 0, 0)
    path = _save(tmp_path / "colour.png", Image.fromarray(rgb))
    with pytest.raises(DataFormatError) as info:
        load_mask(path)
    text = str(info.value)
    assert "colour.png" in text and "x=2, y=1" in text and "grayscale" in text and "palette" in text


def test_read_label_lines_skips_comments_blanks_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "l.txt"
    path.write_bytes("\ufeff# header\n\na;1\r\n   \n  # indented comment\nb;2\n".encode())
    assert list(read_label_lines(path)) == [(3, "a;1"), (6, "b;2")]
    with pytest.raises(DataFormatError, match="label file not found"):
        list(read_label_lines(tmp_path / "missing.txt"))


def test_resolve_split_aliases() -> None:
    assert resolve_split("train", ("training", "val", "test")) == "training"
    assert resolve_split("Training", ("train", "val", "test")) == "train"
    assert resolve_split("validation", ("training", "val", "test")) == "val"
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        resolve_split("dev", ("training", "val", "test"))


class _Toy(SampleDataset):
    def __init__(self, bad: set[int], n: int = 4, on_error: str = "skip") -> None:
        super().__init__(on_error)
        self.root = Path("/toy")
        self.bad, self.n, self.calls = bad, n, 0

    def __len__(self) -> int:
        return self.n

    def _load(self, index: int) -> int:
        self.calls += 1
        if index in self.bad:
            raise DataFormatError("broken", f"/toy/{index}.png")
        return index


def test_skip_policy_wraps_records_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    toy = _Toy(bad={1, 3})
    with caplog.at_level(logging.WARNING, logger="visionfm.data"):
        assert toy[1] == 2
        assert toy[3] == 0  # wraps around
        assert toy[1] == 2 and toy[-1] == 0
    assert toy.skipped_paths == {"/toy/1.png", "/toy/3.png"}
    assert sum("/toy/1.png" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(IndexError):
        toy[4]


def test_skip_policy_raises_when_nothing_is_readable() -> None:
    with pytest.raises(DataFormatError, match="none of the 3 samples could be read"):
        _Toy(bad={0, 1, 2}, n=3)[0]


def test_fail_policy_and_bad_policy_name() -> None:
    with pytest.raises(DataFormatError, match=r"/toy/1\.png: broken"):
        _Toy(bad={1}, on_error="fail")[1]
    with pytest.raises(ConfigError, match="on_error must be one of fail, skip"):
        _Toy(bad=set(), on_error="ignore")
