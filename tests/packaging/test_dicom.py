"""DICOM reading through pydicom's functions: CT-like rescale + window, VOI LUT, MONOCHROME1, YBR_FULL,
multi-frame stacks. Expected pixels are computed here from the DICOM formulas (PS3.3 C.11.2.1.2)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import write_dicom
from visionfm.errors import DataFormatError
from visionfm.inference.io import read_dicom, read_dicom_frames, read_image


def _linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM LINEAR VOI function onto 0..255, written from the standard."""
    c, w = center - 0.5, width - 1.0
    y = np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 255.0, ((x - c) / w + 0.5) * 255.0))
    return np.rint(y).astype(np.uint8)


def _grey(path) -> np.ndarray:
    a = np.asarray(read_image(path))
    assert a.ndim == 3 and a.shape[-1] == 3 and (a[..., 0] == a[..., 2]).all()
    return a[..., 0]


CT = np.tile(np.arange(-1024, 2048, 12, dtype=np.int16), (6, 1))  # signed stored values, 6 x 256


def test_ct_rescale_and_window(tmp_path):
    path = write_dicom(tmp_path / "ct.dcm", CT, "MONOCHROME2", PixelRepresentation=1, RescaleSlope="2",
                       RescaleIntercept="-1024", WindowCenter="40", WindowWidth="400")
    hu = CT.astype(np.float64) * 2 - 1024
    got = _grey(path)
    np.testing.assert_array_equal(got, _linear_window(hu, 40, 400))
    assert got.min() == 0 and got.max() == 255 and 10 < len(np.unique(got)) < 256  # a real window, clipped
    # Several windows (VM 2): the first one is used.
    two = write_dicom(tmp_path / "two.dcm", CT, "MONOCHROME2", PixelRepresentation=1, RescaleSlope="2",
                      RescaleIntercept="-1024", WindowCenter=["40", "400"], WindowWidth=["400", "2000"])
    np.testing.assert_array_equal(_grey(two), got)


def test_monochrome1_is_inverted_after_the_window(tmp_path):
    kw = {"PixelRepresentation": 1, "RescaleSlope": "2", "RescaleIntercept": "-1024", "WindowCenter": "40",
          "WindowWidth": "400"}
    mono2 = _grey(write_dicom(tmp_path / "m2.dcm", CT, "MONOCHROME2", **kw))
    mono1 = _grey(write_dicom(tmp_path / "m1.dcm", CT, "MONOCHROME1", **kw))
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_voi_lut_sequence_is_applied(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (4, 1))
    lut = np.rint(np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16)  # a gamma curve, not linear
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 16])  # entries, first stored value mapped, bits per entry
    item.add_new("LUTData", "US", lut.tolist())
    path = write_dicom(tmp_path / "lut.dcm", stored, "MONOCHROME2", BitsStored=12, VOILUTSequence=Sequence([item]))
    expect = np.rint(lut[stored].astype(np.float64) / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(_grey(path), expect)


def test_ybr_full_is_converted_to_rgb(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 10, 3)).astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # ITU-R BT.601 full range (the JPEG/JFIF matrix of PS3.3 C.7.6.3.1.2).
    ybr = np.stack([0.299 * r + 0.587 * g + 0.114 * b,
                    -0.168736 * r - 0.331264 * g + 0.5 * b + 128,
                    0.5 * r - 0.418688 * g - 0.081312 * b + 128], -1)
    path = write_dicom(tmp_path / "ybr.dcm", np.clip(np.rint(ybr), 0, 255).astype(np.uint8), "YBR_FULL")
    got = np.asarray(read_image(path)).astype(int)
    assert np.abs(got - rgb).max() <= 2  # rounding of the stored YBR values only


def test_multi_frame_stack(tmp_path):
    frames = np.stack([np.full((8, 9), v, dtype=np.uint16) for v in (0, 1000, 4095)])
    frames[:, 0, 0] = 4095
    path = write_dicom(tmp_path / "stack.dcm", frames, "MONOCHROME2", frames=3, BitsStored=12)
    images = read_dicom_frames(path)
    assert len(images) == 3 and all(im.size == (9, 8) and im.mode == "RGB" for im in images)
    assert [int(np.asarray(im)[4, 4, 0]) for im in images] == [0, round(1000 * 255 / 4095), 255]
    with pytest.warns(UserWarning, match="3 frames; using the first"):
        first = read_dicom(path)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(images[0]))
    single = write_dicom(tmp_path / "one.dcm", frames[1], "MONOCHROME2", BitsStored=12)
    assert len(read_dicom_frames(single)) == 1
    colour = np.stack([np.full((4, 5, 3), v, dtype=np.uint8) for v in (10, 200)])
    rgb_frames = read_dicom_frames(write_dicom(tmp_path / "rgb2.dcm", colour, "RGB", frames=2))
    assert [int(np.asarray(im)[0, 0, 1]) for im in rgb_frames] == [10, 200]


def test_invalid_window_is_one_clear_error(tmp_path):
    path = write_dicom(tmp_path / "badwin.dcm", CT, "MONOCHROME2", PixelRepresentation=1, WindowCenter="40",
                       WindowWidth="0")
    with pytest.raises(DataFormatError, match=r"badwin\.dcm: invalid DICOM VOI window"):
        read_image(path)
