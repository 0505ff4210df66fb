"""visionfm prepare: layout, sizes, no upscaling, resuming, overwrite, corrupt files, prepare.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionfm.cli.main import main
from visionfm.data.layouts import PretrainImages
from visionfm.data.prepare import prepare_images, target_size
from visionfm.errors import ConfigError, DataFormatError


def _img(path: Path, size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, quality=90) if path.suffix == ".jpg" else img.save(path)


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    _img(root / "Fundus" / "a.jpg", (640, 480))
    _img(root / "Fundus" / "a.png", (640, 480), seed=1)  # same stem as a.jpg
    _img(root / "Fundus" / "nested" / "deep" / "b.png", (600, 600), mode="L")
    (root / "Fundus" / "bad.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (root / "Fundus" / "notes.txt").write_text("not an image")
    _img(root / "Silt-Lamp" / "s.jpg", (600, 450))
    _img(root / "OCT" / "small.jpg", (300, 200))  # smaller than the target: re-encoded at its own size
    return root


def _sizes(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix != ".json":
            with Image.open(p) as im:
                out[p.relative_to(root).as_posix()] = (im.size, im.mode)
    return out


def test_target_size_keeps_aspect_and_never_upscales() -> None:
    assert target_size(1200, 900, short_side=448) == (597, 448)
    assert target_size(900, 1200, max_side=600) == (450, 600)
    assert target_size(300, 200, short_side=448) == (300, 200)
    assert target_size(300, 200, max_side=300) == (300, 200)
    with pytest.raises(ConfigError):
        target_size(10, 10)


def test_prepare_layout_sizes_and_summary(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    summary = prepare_images(src, dst, "all", workers=1)
    assert _sizes(dst) == {
        "Fundus/a.jpg.jpg": ((597, 448), "RGB"),
        "Fundus/a.png.jpg": ((597, 448), "RGB"),
        "Fundus/nested/deep/b.jpg": ((448, 448), "RGB"),
        "OCT/small.jpg": ((300, 200), "RGB"),
        "SlitLamp/s.jpg": ((597, 448), "RGB"),
    }
    # pretraining reads the prepared tree unchanged, under canonical folder names
    ds = PretrainImages(dst, ["Fundus", "OCT", "SlitLamp"])
    assert ds.modality_counts() == {"Fundus": 3, "OCT": 1, "SlitLamp": 1}
    assert sorted(d.name for d in dst.iterdir() if d.is_dir()) == ["Fundus", "OCT", "SlitLamp"]

    record = json.loads((dst / "prepare.json").read_text())
    assert record == json.loads(json.dumps(summary))
    assert record["settings"]["short_side"] == 448 and record["settings"]["format"] == "jpeg"
    assert record["counts"]["Fundus"] == {"found": 4, "written": 3, "up_to_date": 0, "corrupt": 1}
    assert record["counts"]["SlitLamp"]["written"] == 1
    assert record["total"] == {"found": 6, "written": 5, "up_to_date": 0, "corrupt": 1}
    assert [c["path"] for c in record["corrupt_files"]] == [str((src / "Fundus" / "bad.jpg").resolve())]
    assert record["mean_source_pixels"] > record["mean_output_pixels"] > 0
    assert not list(dst.rglob(".*"))  # no temporary files left behind


def test_rerun_skips_up_to_date_then_redoes_changed_and_overwrite(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    prepare_images(src, dst, "Fundus,Silt-Lamp", workers=1)
    out = dst / "SlitLamp" / "s.jpg"
    before = out.stat().st_mtime_ns

    again = prepare_images(src, dst, ["fundus", "SlitLamp"], workers=1)
    assert again["total"] == {"found": 5, "written": 0, "up_to_date": 4, "corrupt": 1}
    assert out.stat().st_mtime_ns == before
    assert again["images_per_second"] is None

    # a source changed after its output: redone
    _img(src / "Silt-Lamp" / "s.jpg", (1000, 2000), seed=3)
    future = out.stat().st_mtime + 10
    os.utime(src / "Silt-Lamp" / "s.jpg", (future, future))
    third = prepare_images(src, dst, "Fundus,SlitLamp", workers=1)
    assert third["counts"]["SlitLamp"] == {"found": 1, "written": 1, "up_to_date": 0, "corrupt": 0}
    with Image.open(out) as im:
        assert im.size == (448, 896)

    forced = prepare_images(src, dst, "Fundus,SlitLamp", workers=2, overwrite=True)
    assert forced["total"]["written"] == 4 and forced["total"]["up_to_date"] == 0


def test_other_settings_refused_without_overwrite(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    prepare_images(src, dst, "OCT,SlitLamp", workers=1)
    with pytest.raises(ConfigError, match="other settings"):
        prepare_images(src, dst, "OCT,SlitLamp", max_side=320, workers=1)
    summary = prepare_images(src, dst, "OCT,SlitLamp", max_side=320, format="png", workers=1, overwrite=True)
    assert summary["settings"]["max_side"] == 320 and summary["settings"]["short_side"] is None
    with Image.open(dst / "SlitLamp" / "s.png") as im:
        assert im.size == (320, 240) and im.format == "PNG"
    with Image.open(dst / "OCT" / "small.png") as im:
        assert im.size == (300, 200)


def test_corrupt_fail_and_bad_arguments(src: Path, tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="bad.jpg"):
        prepare_images(src, tmp_path / "dst", "Fundus", on_corrupt="fail", workers=1)
    with pytest.raises(ConfigError):
        prepare_images(src, tmp_path / "d2", "Fundus", short_side=300, max_side=300)
    with pytest.raises(ConfigError):
        prepare_images(src, tmp_path / "d2", "Fundus", format="gif")
    with pytest.raises(ConfigError):
        prepare_images(src, tmp_path / "d2", "NotAModality")
    with pytest.raises(DataFormatError, match="no folder for modality"):
        prepare_images(src, tmp_path / "d2", "FFA")
    with pytest.raises(ConfigError, match="inside the source"):
        prepare_images(src, src / "Fundus" / "small", "Fundus")


def test_cli(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "dst"
    rc = main(["prepare", "--data-path", str(src), "--dst_path", str(dst), "--modality", "OCT,Silt-Lamp",
               "--short-side", "100", "--workers", "1", "--progress", "false"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "prepared 2 of 2 images" in text and "images/s" in text and "mean pixels per image" in text
    with Image.open(dst / "SlitLamp" / "s.jpg") as im:
        assert im.size == (133, 100)
    rc = main(["prepare", "--data_path", str(src), "--dst_path", str(dst), "--max_side", "50"])
    assert rc == 2 and "other settings" in capsys.readouterr().err
