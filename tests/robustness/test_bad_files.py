"""Bad and unusual FILE inputs (issue 13, findings 4-6): every one either gives exit code 2 with exactly one
``visionfm <command>: error:`` line on stderr that names the file, no traceback and no half-written output,
or — for the unusual but valid ones — the correct result.

Weights files (``info``, ``export``), model folders and image files (``predict``), images by their real bit
depth (PNG sBIT, TIFF BitsPerSample, DICOM BitsStored), masks (JPEG, ids, sizes, modes) and ``predict``
output names / ``--on_error``. Tiny models (vit_tiny at 32 px) and a few synthetic files only.
"""

from __future__ import annotations

import csv
import json
import logging
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import write_dicom
from visionfm.cli.main import main
from visionfm.errors import DataFormatError

SIZE = 32

# -- helpers ------------------------------------------------------------------------------------------------


def _run(argv, capsys):
    """``(exit code, error lines, whole stderr)`` of one in-process command."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, [ln for ln in err.splitlines() if ": error: " in ln], err


def _assert_one_line(rc, errors, err, name):
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert len(errors) == 1, err
    assert name in errors[0], errors[0]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png16(path: Path, arr: np.ndarray, sbit: int | None = None) -> Path:
    """A 16-bit grayscale PNG, with an ``sBIT`` chunk right after IHDR when ``sbit`` is given."""
    Image.fromarray(arr.astype(np.uint16)).save(path)
    if sbit is not None:
        raw = path.read_bytes()
        path.write_bytes(raw[:33] + _png_chunk(b"sBIT", bytes([sbit])) + raw[33:])  # 8 signature + 25 IHDR
    return path


def _tiff12(path: Path, arr: np.ndarray) -> Path:
    """An uncompressed little-endian TIFF with BitsPerSample 12 (samples packed MSB first)."""
    h, w = arr.shape
    bits = "".join(format(int(v), "012b") for row in arr for v in list(row) + [0] * (w % 2))
    data = int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""
    tags = [(256, 3, w), (257, 3, h), (258, 3, 12), (259, 3, 1), (262, 3, 1), (273, 4, 0), (277, 3, 1),
            (278, 3, h), (279, 4, len(data))]
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(tags) + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_offset) + struct.pack("<H", len(tags)))
    for tag, typ, value in tags:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, 1) + packed
    out += struct.pack("<I", 0) + data
    path.write_bytes(bytes(out))
    return path


def _dicom(path: Path, arr: np.ndarray, bits_stored: int, pixel_data: bool = True, **extra) -> Path:
    return write_dicom(path, arr.astype(np.uint16), "MONOCHROME2", pixel_data=pixel_data, BitsStored=bits_stored,
                       HighBit=bits_stored - 1, **extra)


# -- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory, encoder):
    """A valid encoder checkpoint, a valid classification model folder and a valid image."""
    from visionfm.models.heads import ClsHead
    from visionfm.packaging import model_folder_from_training

    d = tmp_path_factory.mktemp("valid")
    pth = d / "enc.pth"
    torch.save({"teacher": encoder.state_dict()}, pth)
    folder = model_folder_from_training(
        d / "model", encoder=encoder, head=ClsHead(192 * 4, 3).eval(), task="classification",
        task_kind="multiclass", modality="Fundus", input_size=SIZE,
        features={"type": "pooled", "n_last_blocks": 4, "avgpool": 0}, head_type="cls",
        head_args={"embed_dim": 192 * 4, "num_classes": 3}, class_names=["normal", "dr", "amd"])
    img = d / "eye.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(img)
    return {"pth": pth, "model": folder, "image": img, "dir": d}


# -- weights files: info and export ------------------------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def _make_weights(kind: str, d: Path, valid: Path, encoder) -> Path:
    p = d / {"safetensors_junk": "w.safetensors", "safetensors_empty": "w.safetensors",
             "safetensors_truncated": "w.safetensors"}.get(kind, "w.pth")
    good = valid.read_bytes()
    if kind == "text":
        p.write_text("hello, this is not a checkpoint\n")
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "random_bytes":
        p.write_bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    elif kind == "pickle_header_only":
        p.write_bytes(b"\x80\x04\x95")
    elif kind == "zip_truncated":
        p.write_bytes(good[: len(good) // 2])
    elif kind == "zip_header_junk":
        p.write_bytes(b"PK\x03\x04" + b"\0" * 200)
    elif kind == "json":
        p.write_text('{"teacher": {}}')
    elif kind == "safetensors_junk":
        p.write_bytes(b"garbage, not safetensors")
    elif kind == "safetensors_empty":
        p.write_bytes(b"")
    elif kind == "safetensors_truncated":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(p))
        p.write_bytes(p.read_bytes()[:5000])
    elif kind == "unsafe_pickle":
        with open(p, "wb") as fh:
            pickle.dump({"teacher": _Evil()}, fh)
        torch.save({"teacher": {"x": torch.zeros(1)}, "evil": _Evil()}, p)
    elif kind == "folder":
        p = d / "w_folder.pth"
        p.mkdir()
    elif kind == "missing":
        p = d / "missing.pth"
    elif kind == "nan_weights":
        sd = {k: v.clone() for k, v in encoder.state_dict().items()}
        sd["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
        torch.save({"teacher": sd}, p)
    elif kind == "inf_weights":
        sd = {k: v.clone() for k, v in encoder.state_dict().items()}
        sd["pos_embed"][0, 0, 0] = float("inf")
        torch.save({"teacher": sd}, p)
    elif kind == "list_of_ints":
        torch.save([1, 2, 3], p)
    elif kind == "dict_without_tensors":
        torch.save({"teacher": {"epoch": 3}}, p)
    elif kind == "missing_tensors":
        sd = {k: v for k, v in encoder.state_dict().items() if not k.startswith("blocks.11")}
        torch.save({"teacher": sd}, p)
    else:
        raise AssertionError(kind)
    return p


UNREADABLE = ["text", "empty", "random_bytes", "pickle_header_only", "zip_truncated", "zip_header_junk", "json",
              "safetensors_junk", "safetensors_empty", "safetensors_truncated", "unsafe_pickle", "folder", "missing"]
NOT_AN_ENCODER = ["nan_weights", "inf_weights", "list_of_ints", "dict_without_tensors", "missing_tensors"]


@pytest.mark.parametrize("kind", UNREADABLE)
def test_info_on_unreadable_weights(kind, tmp_path, files, encoder, capsys):
    p = _make_weights(kind, tmp_path, files["pth"], encoder)
    rc, errors, err = _run(["info", p], capsys)
    _assert_one_line(rc, errors, err, p.name)
    assert "unpickled code ran" not in err + capsys.readouterr().out


@pytest.mark.parametrize("kind", UNREADABLE + NOT_AN_ENCODER)
def test_export_on_bad_weights_writes_nothing(kind, tmp_path, files, encoder, capsys):
    p = _make_weights(kind, tmp_path, files["pth"], encoder)
    out = tmp_path / "out" / "enc.safetensors"
    rc, errors, err = _run(["export", "--weights", p, "--arch", "vit_tiny", "--out", out], capsys)
    _assert_one_line(rc, errors, err, p.name)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_info_describes_a_file_it_cannot_export(tmp_path, files, encoder, capsys):
    """``info`` describes any readable file (also one with NaN weights) without loading an encoder."""
    p = _make_weights("nan_weights", tmp_path, files["pth"], encoder)
    assert main(["info", str(p), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backbones"]["teacher"]["inferred_arch"] == "vit_tiny"


@pytest.mark.parametrize("out, what", [("enc.pth", "--out"), ("a_folder.safetensors", "folder"),
                                       ("a_file/enc.safetensors", "a_file")])
def test_export_out_paths(out, what, tmp_path, files, capsys):
    (tmp_path / "a_folder.safetensors").mkdir()
    (tmp_path / "a_file").write_text("x")
    rc, errors, err = _run(["export", "--weights", files["pth"], "--out", tmp_path / out], capsys)
    _assert_one_line(rc, errors, err, what)
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("enc.*"))


# -- model folders (predict) -------------------------------------------------------------------------------------


def _edit_config(folder: Path, edit) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    edit(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


def _bad_folder(kind: str, src: Path, d: Path) -> Path:
    import shutil

    from safetensors.torch import load_file, save_file

    if kind == "is_a_file":
        p = d / "model_file"
        p.write_text("x")
        return p
    if kind == "missing":
        return d / "no_such_model"
    f = d / "model"
    shutil.copytree(src, f)
    w = f / "model.safetensors"
    if kind == "class_names_short":
        _edit_config(f, lambda c: c.update(class_names=["normal", "dr"]))
    elif kind == "class_names_long":
        _edit_config(f, lambda c: c.update(class_names=["a", "b", "c", "d"]))
    elif kind == "class_names_not_list":
        _edit_config(f, lambda c: c.update(class_names="normal,dr,amd"))
    elif kind == "config_not_json":
        (f / "config.json").write_text("{not json")
    elif kind == "config_a_list":
        (f / "config.json").write_text("[1, 2]")
    elif kind == "config_missing":
        (f / "config.json").unlink()
    elif kind == "config_binary":
        (f / "config.json").write_bytes(b"\xff\xfe\x00garbage")
    elif kind == "weights_missing":
        w.unlink()
    elif kind == "weights_junk":
        w.write_bytes(b"junk")
    elif kind == "weights_truncated":
        w.write_bytes(w.read_bytes()[:4000])
    elif kind == "weights_nan":
        t = load_file(str(w))
        key = next(k for k in t if k.startswith("head.") and t[k].is_floating_point())
        t[key] = t[key].clone().fill_(float("nan"))
        save_file(t, str(w))
    elif kind == "weights_missing_tensor":
        t = load_file(str(w))
        t.pop(next(k for k in t if k.startswith("head.")))
        save_file(t, str(w))
    elif kind == "head_args_mismatch":
        _edit_config(f, lambda c: (c["head"]["args"].update(num_classes=4), c.update(class_names=list("abcd"))))
    elif kind == "format_version":
        _edit_config(f, lambda c: c.update(format_version=99))
    elif kind == "unknown_task":
        _edit_config(f, lambda c: c.update(task="astrology"))
    elif kind == "unknown_head":
        _edit_config(f, lambda c: c["head"].update(type="no_such_head"))
    elif kind == "input_size_not_multiple":
        _edit_config(f, lambda c: c["preprocess"].update(input_size=33))
    elif kind == "std_zero":
        _edit_config(f, lambda c: c["preprocess"].update(std=[0, 1, 1]))
    else:
        raise AssertionError(kind)
    return f


FOLDERS = ["class_names_short", "class_names_long", "class_names_not_list", "config_not_json", "config_a_list",
           "config_missing", "config_binary", "weights_missing", "weights_junk", "weights_truncated", "weights_nan",
           "weights_missing_tensor", "head_args_mismatch", "format_version", "unknown_task", "unknown_head",
           "input_size_not_multiple", "std_zero", "is_a_file", "missing"]


@pytest.mark.parametrize("kind", FOLDERS)
def test_predict_with_a_bad_model_folder(kind, tmp_path, files, capsys):
    f = _bad_folder(kind, files["model"], tmp_path)
    out = tmp_path / "pred"
    rc, errors, err = _run(["predict", "--model", f, "--input", files["image"], "--output", out, "--device", "cpu"],
                           capsys)
    _assert_one_line(rc, errors, err, f.name)
    assert not out.exists()  # nothing written for a model that cannot be loaded


# -- input files (predict on one file: on_error fail) ---------------------------------------------------------------


def _bad_input(kind: str, d: Path, valid: Path) -> Path:
    if kind == "random_bytes_png":
        p = d / "x.png"
        p.write_bytes(np.random.default_rng(2).integers(0, 256, 500, dtype=np.uint8).tobytes())
    elif kind == "truncated_png":
        p = d / "x.png"
        p.write_bytes(valid.read_bytes()[:200])
    elif kind == "truncated_jpeg":
        p = d / "x.jpg"
        Image.open(valid).save(p, quality=90)
        p.write_bytes(p.read_bytes()[:300])
    elif kind == "empty_png":
        p = d / "x.png"
        p.write_bytes(b"")
    elif kind == "text_as_jpg":
        p = d / "x.jpg"
        p.write_text("not an image")
    elif kind == "corrupt_dicom":
        p = d / "x.dcm"
        p.write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    elif kind == "dicom_without_pixels":
        p = _dicom(d / "x.dcm", np.zeros((4, 4)), 12, pixel_data=False)
    elif kind == "signed_16bit_png":
        p = d / "x.tif"
        Image.fromarray(np.full((8, 8), -5, dtype=np.int32)).save(p)
    elif kind == "missing":
        p = d / "missing.png"
    elif kind == "empty_folder":
        p = d / "empty_folder"
        p.mkdir()
        (p / "notes.txt").write_text("no images here")
    else:
        raise AssertionError(kind)
    return p


INPUTS = ["random_bytes_png", "truncated_png", "truncated_jpeg", "empty_png", "text_as_jpg", "corrupt_dicom",
          "dicom_without_pixels", "signed_16bit_png", "missing", "empty_folder"]


@pytest.mark.parametrize("kind", INPUTS)
def test_predict_on_a_bad_input_file(kind, tmp_path, files, capsys):
    p = _bad_input(kind, tmp_path, files["image"])
    out = tmp_path / "pred"
    rc, errors, err = _run(["predict", "--model", files["model"], "--input", p, "--output", out,
                            "--device", "cpu"], capsys)
    _assert_one_line(rc, errors, err, p.name)
    assert not (out / "attention").exists()
    if (out / "predictions.csv").exists():  # the table, always complete: the failed file with its reason
        rows = _rows(out / "predictions.csv")
        assert [(r["image"], r["status"]) for r in rows] == [(p.name, "failed")] and rows[0]["error"]


# -- predict on folders: unique output names, --on_error, the table always written -----------------------------------


def test_predict_output_names_never_collide(tmp_path, files, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for rel in ("x.png", "x.jpg", "sub/a.png", "sub__a.png", "X.png"):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(src / rel)
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(files["model"]), "--input", str(src), "--output", str(out),
                 "--device", "cpu"]) == 0
    rows = _rows(out / "predictions.csv")
    assert sorted(r["image"] for r in rows) == sorted(["x.png", "x.jpg", "sub/a.png", "sub__a.png", "X.png"])
    maps = [r["attention_map"] for r in rows]
    assert len({m.casefold() for m in maps}) == 5, maps  # distinct even on a case-insensitive file system
    assert all((out / m).is_file() for m in maps)
    assert "attention/sub/a.png.png" in maps and "attention/sub__a.png.png" in maps


def _mixed_folder(tmp_path: Path, valid: Path) -> Path:
    src = tmp_path / "mixed"
    (src / "sub").mkdir(parents=True)
    for name in ("a.png", "c.png"):
        Image.open(valid).save(src / name)
    (src / "b.png").write_bytes(valid.read_bytes()[:150])  # truncated
    (src / "sub" / "d.jpg").write_text("text, not a JPEG")
    return src


def test_predict_skips_unreadable_files_of_a_folder_and_lists_them(tmp_path, files, capsys):
    src = _mixed_folder(tmp_path, files["image"])
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(files["model"]), "--input", str(src), "--output", str(out),
                 "--device", "cpu"]) == 0
    rows = _rows(out / "predictions.csv")
    assert [(r["image"], r["status"]) for r in rows] == [("a.png", "ok"), ("b.png", "skipped"), ("c.png", "ok"),
                                                         ("sub/d.jpg", "skipped")]
    assert all(r["error"] for r in rows if r["status"] == "skipped") and rows[0]["prediction"]
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["n_skipped"] == 2 and [s["image"] for s in summary["skipped"]] == ["b.png", "sub/d.jpg"]
    assert len(summary["predictions"]) == 2
    assert sorted(p.name for p in (out / "attention").rglob("*.png")) == ["a.png.png", "c.png.png"]


def test_predict_on_error_fail_stops_with_one_line_and_writes_the_table(tmp_path, files, capsys):
    src = _mixed_folder(tmp_path, files["image"])
    out = tmp_path / "pred"
    rc, errors, err = _run(["predict", "--model", files["model"], "--input", src, "--output", out,
                            "--device", "cpu", "--on_error", "fail", "--batch_size", "1"], capsys)
    _assert_one_line(rc, errors, err, "b.png")
    rows = _rows(out / "predictions.csv")
    assert [(r["image"], r["status"]) for r in rows] == [("a.png", "ok"), ("b.png", "failed")]
    assert json.loads((out / "predictions.json").read_text())["failed"]["image"] == "b.png"


def test_predict_on_a_folder_of_only_bad_files(tmp_path, files, capsys):
    src = tmp_path / "bad"
    src.mkdir()
    (src / "a.png").write_bytes(b"")
    (src / "b.jpg").write_text("no")
    out = tmp_path / "pred"
    rc, errors, err = _run(["predict", "--model", files["model"], "--input", src, "--output", out,
                            "--device", "cpu"], capsys)
    _assert_one_line(rc, errors, err, "a.png")
    assert [r["status"] for r in _rows(out / "predictions.csv")] == ["skipped", "skipped"]


def test_predict_output_that_is_a_file(tmp_path, files, capsys):
    (tmp_path / "taken").write_text("x")
    rc, errors, err = _run(["predict", "--model", files["model"], "--input", files["image"],
                            "--output", tmp_path / "taken" / "pred", "--device", "cpu"], capsys)
    _assert_one_line(rc, errors, err, "taken")


# -- images by their real bit depth -----------------------------------------------------------------------------------

RAMP12 = np.tile(np.array([0, 1024, 2048, 4095], dtype=np.uint16), (4, 1))
EXPECT12 = np.rint(RAMP12.astype(np.float64) * 255 / 4095).astype(np.uint8)


def _write_depth_case(kind: str, d: Path) -> tuple[Path, np.ndarray, bool]:
    """``(file, expected 8-bit grey values, whether the low-bits warning is expected)``."""
    if kind == "png16_sbit12_low_bits":
        return _png16(d / "a.png", RAMP12, sbit=12), EXPECT12, False
    if kind == "png16_sbit12_spec_scaled":  # PNG spec layout: samples scaled up to 16 bits (v << 4)
        return _png16(d / "a.png", RAMP12 << 4, sbit=12), np.rint((RAMP12 << 4) * 255.0 / 65535).astype(np.uint8), False
    if kind == "png16_sbit16_full":
        full = np.tile(np.array([0, 257, 32896, 65535], dtype=np.uint16), (4, 1))
        return _png16(d / "a.png", full, sbit=16), np.rint(full * 255.0 / 65535).astype(np.uint8), False
    if kind == "png16_no_record_low_bits":
        return _png16(d / "a.png", RAMP12), np.rint(RAMP12 * 255.0 / 65535).astype(np.uint8), True
    if kind == "png16_no_record_full_range":
        full = np.tile(np.array([0, 1000, 40000, 65535], dtype=np.uint16), (4, 1))
        return _png16(d / "a.png", full), np.rint(full * 255.0 / 65535).astype(np.uint8), False
    if kind == "tiff12_packed":
        return _tiff12(d / "a.tif", RAMP12), EXPECT12, False
    if kind == "tiff16":
        full = np.tile(np.array([0, 1000, 40000, 65535], dtype=np.uint16), (4, 1))
        p = d / "a.tif"
        Image.fromarray(full).save(p)
        return p, np.rint(full * 255.0 / 65535).astype(np.uint8), False
    if kind == "dicom_bits_stored_12":
        return _dicom(d / "a.dcm", RAMP12, 12), EXPECT12, False
    if kind == "dicom_bits_stored_10":
        ramp10 = np.tile(np.array([0, 256, 512, 1023], dtype=np.uint16), (4, 1))
        return _dicom(d / "a.dcm", ramp10, 10), np.rint(ramp10 * 255.0 / 1023).astype(np.uint8), False
    if kind == "dicom_window_wins":  # a VOI window is the file's own display instruction
        return (_dicom(d / "a.dcm", RAMP12, 12, WindowCenter="2048", WindowWidth="4096"),
                np.array([[0, 64, 128, 255]] * 4, dtype=np.uint8), False)
    if kind == "png8_grey":
        g = np.tile(np.array([0, 10, 128, 255], dtype=np.uint8), (4, 1))
        p = d / "a.png"
        Image.fromarray(g).save(p)
        return p, g, False
    raise AssertionError(kind)


DEPTHS = ["png16_sbit12_low_bits", "png16_sbit12_spec_scaled", "png16_sbit16_full", "png16_no_record_low_bits",
          "png16_no_record_full_range", "tiff12_packed", "tiff16", "dicom_bits_stored_12", "dicom_bits_stored_10",
          "dicom_window_wins", "png8_grey"]


@pytest.mark.parametrize("kind", DEPTHS)
def test_images_by_their_real_bit_depth(kind, tmp_path, caplog, monkeypatch):
    from visionfm.data import images
    from visionfm.inference.io import read_image

    monkeypatch.setattr(images, "_LOW_BITS_WARNED", [False])
    p, expect, warns = _write_depth_case(kind, tmp_path)
    with caplog.at_level(logging.WARNING, logger="visionfm.data"):
        got = np.asarray(read_image(p))
    assert got.shape == expect.shape + (3,)
    assert np.abs(got[..., 0].astype(int) - expect.astype(int)).max() <= 1, (got[..., 0], expect)
    low_bits = [r for r in caplog.records if "low" in r.getMessage() and "bits" in r.getMessage()]
    assert len(low_bits) == (1 if warns else 0), [r.getMessage() for r in caplog.records]
    if warns:
        assert p.name in low_bits[0].getMessage()
    if p.suffix != ".dcm":  # training reads through the same function: the same pixels
        assert (np.asarray(images.load_image(p)) == got).all()


def test_low_bits_warning_is_given_once(tmp_path, caplog, monkeypatch):
    from visionfm.data import images

    monkeypatch.setattr(images, "_LOW_BITS_WARNED", [False])
    with caplog.at_level(logging.WARNING, logger="visionfm.data"):
        for i in range(3):
            images.load_image(_png16(tmp_path / f"{i}.png", RAMP12))
    assert sum("low 12 bits" in r.getMessage() for r in caplog.records) == 1


# -- masks ---------------------------------------------------------------------------------------------------------


def _seg_root(d: Path, mask: np.ndarray | None, mask_name: str = "0.png", image_size=(16, 16), writer=None) -> Path:
    images, labels = d / "A" / "training" / "images", d / "A" / "training" / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    Image.fromarray(np.zeros(image_size + (3,), np.uint8)).save(images / "0.png")
    if writer is not None:
        writer(labels / mask_name)
    else:
        Image.fromarray(mask).save(labels / mask_name)
    return d


def _mask_case(kind: str, d: Path) -> tuple[Path, int, str]:
    """``(root, num_labels, file name the error must name)``."""
    ids = np.zeros((16, 16), np.uint8)
    ids[4:12, 4:12] = 1
    if kind == "jpeg_mask":
        return _seg_root(d, ids * 255, "0.jpg"), 1, "0.jpg"
    if kind == "jpeg_content_named_png":
        def jpeg(p: Path) -> None:
            Image.fromarray(ids * 255).save(p, format="JPEG")

        return _seg_root(d, None, "0.png", writer=jpeg), 1, "0.png"
    if kind == "id_out_of_range":
        return _seg_root(d, ids * 7), 3, "0.png"
    if kind == "binary_mask_with_other_values":
        m = ids * 255
        m[0, 0] = 128
        return _seg_root(d, m), 1, "0.png"
    if kind == "size_mismatch":
        return _seg_root(d, ids[:8]), 2, "0.png"
    if kind == "colour_mask":
        rgb = np.zeros((16, 16, 3), np.uint8)
        rgb[4:12, 4:12] = (255, 0, 0)
        return _seg_root(d, rgb), 2, "0.png"
    if kind == "float_mask_fractional":
        return _seg_root(d, None, "0.tif",
                         writer=lambda p: Image.fromarray(ids.astype(np.float32) * 0.5).save(p)), 2, "0.tif"
    if kind == "corrupt_mask":
        return _seg_root(d, None, "0.png", writer=lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n garbage")), 2, "0.png"
    if kind == "empty_mask_file":
        return _seg_root(d, None, "0.png", writer=lambda p: p.write_bytes(b"")), 2, "0.png"
    if kind == "cmyk_mask":
        return _seg_root(d, None, "0.tif",
                         writer=lambda p: Image.fromarray(ids).convert("CMYK").save(p)), 2, "0.tif"
    raise AssertionError(kind)


MASKS = ["jpeg_mask", "jpeg_content_named_png", "id_out_of_range", "binary_mask_with_other_values", "size_mismatch",
         "colour_mask", "float_mask_fractional", "corrupt_mask", "empty_mask_file", "cmyk_mask"]


@pytest.mark.parametrize("kind", MASKS)
def test_bad_masks_are_refused_naming_the_file(kind, tmp_path):
    from visionfm.data.layouts import SegmentationDataset

    root, num_labels, name = _mask_case(kind, tmp_path)
    with pytest.raises(DataFormatError) as info:
        SegmentationDataset(root, "training", num_labels)[0]
    text = str(info.value)
    assert name in text and "\n" not in text
    if kind.startswith("jpeg"):
        assert "lossy" in text


@pytest.mark.parametrize("kind", ["palette", "grey_0_255_binary", "uint16_ids", "gray_rgb"])
def test_unusual_but_valid_masks_keep_their_ids(kind, tmp_path):
    from visionfm.data.layouts import SegmentationDataset

    ids = np.zeros((16, 16), np.uint8)
    ids[2:6, 2:6], ids[8:14, 8:14] = 1, 2
    if kind == "palette":
        img = Image.fromarray(ids, mode="L").convert("P")
        root, n, want = _seg_root(tmp_path, None, writer=lambda p: img.save(p)), 3, ids
    elif kind == "grey_0_255_binary":
        b = (ids > 0).astype(np.uint8)
        root, n, want = _seg_root(tmp_path, b * 255), 1, b
    elif kind == "uint16_ids":
        root, n, want = _seg_root(tmp_path, ids.astype(np.uint16)), 3, ids
    else:
        root, n, want = _seg_root(tmp_path, np.repeat(ids[..., None], 3, axis=2)), 3, ids
    _, mask, _ = SegmentationDataset(root, "training", n)[0]
    assert (np.asarray(mask) == want).all()


def test_train_seg_refuses_a_jpeg_mask_before_training(tmp_path, capsys):
    """The command-level path: exit 2, one error line naming the JPEG mask, no run folder."""
    root, _, name = _mask_case("jpeg_mask", tmp_path / "data")
    for sub in ("images", "labels"):  # a valid test split: the JPEG training mask is the only problem
        (root / "A" / "test" / sub).mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "A" / "test" / sub / "0.png")
    runs = tmp_path / "runs"
    rc, errors, err = _run(["train-seg", "--data_path", root, "--num_labels", "1", "--pretrained_weights", "random",
                            "--arch", "vit_tiny", "--input_size", SIZE, "--epochs", "1", "--num_workers", "0",
                            "--device", "cpu", "--output_dir", runs, "--name", "r", "--batch_size_per_gpu", "1"],
                           capsys)
    _assert_one_line(rc, errors, err, name)
    assert not (runs / "r" / "model").exists()
