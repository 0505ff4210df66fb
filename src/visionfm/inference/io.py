"""Reading inputs for inference: JPEG/PNG/TIFF/BMP/WebP through :func:`visionfm.data.images.load_image`,
DICOM through pydicom, all as 8-bit RGB PIL images.

DICOM handling (:func:`read_dicom`):

* the modality LUT (``RescaleSlope`` / ``RescaleIntercept``) is applied to grey images;
* VOI windowing: the first ``WindowCenter`` / ``WindowWidth`` pair with the DICOM linear function
  (PS3.3 C.11.2.1.2); without a window the stored values are scaled by their real bit depth
  (``BitsStored``, the rule of :func:`visionfm.data.images.significant_bits`, as for PNG and TIFF);
* ``MONOCHROME1`` (white = low values) is inverted so that the result reads like ``MONOCHROME2``;
* ``RGB`` (and ``YBR_*``, converted to RGB) with more than 8 bits are scaled to 8 bits;
* ``PALETTE COLOR`` goes through its colour lookup table;
* multi-frame files: the first frame, with a warning.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visionfm.data.images import IMAGE_EXTENSIONS, load_image, scale_to_uint8, significant_bits
from visionfm.errors import DataFormatError

__all__ = ["DICOM_EXTENSIONS", "INPUT_EXTENSIONS", "is_dicom_file", "read_dicom", "read_image", "list_inputs",
           "window_to_uint8"]

log = logging.getLogger("visionfm.inference")

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom", ".dic"})
INPUT_EXTENSIONS = frozenset(IMAGE_EXTENSIONS | DICOM_EXTENSIONS)


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """A ``.dcm``/``.dicom`` name, or the ``DICM`` magic at byte 128 (DICOM files often have no extension)."""
    p = Path(path)
    if p.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with open(p, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def window_to_uint8(values: np.ndarray, center: float | None = None, width: float | None = None) -> np.ndarray:
    """Grey values → uint8 through the DICOM linear VOI window, or the min–max range when no window."""
    x = values.astype(np.float64)
    if center is not None and width is not None and width >= 1:
        c, w = float(center), float(width)
        lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
        y = np.where(x <= lo, 0.0, np.where(x > hi, 255.0, ((x - (c - 0.5)) / max(w - 1, 1e-12) + 0.5) * 255.0))
    else:
        finite = x[np.isfinite(x)]
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 0.0
        y = (x - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(x)
    return np.clip(np.rint(np.nan_to_num(y)), 0, 255).astype(np.uint8)


def _first(value: Any) -> float | None:
    if value is None:
        return None
    try:
        if hasattr(value, "__len__") and not isinstance(value, (str, bytes)):
            value = value[0] if len(value) else None
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _dicom_to_uint8(arr: np.ndarray, bits: int, p: Path, type_bits: int | None = None) -> np.ndarray:
    """Stored values with ``BitsStored`` bits → uint8 by the one bit-depth rule of the image readers
    (:func:`visionfm.data.images.significant_bits`, :func:`~visionfm.data.images.scale_to_uint8`)."""
    if arr.dtype == np.uint8:
        return arr
    type_bits = type_bits or int(arr.dtype.itemsize * 8)
    return scale_to_uint8(arr, significant_bits(arr, type_bits, bits, p))


def read_dicom(path: str | os.PathLike[str]) -> Image.Image:
    """A DICOM file as an 8-bit RGB image (see the module docstring for the conversions)."""
    p = Path(path)
    try:
        import pydicom
    except ImportError:  # pragma: no cover - a declared dependency
        raise DataFormatError("reading DICOM needs pydicom (pip install 'pydicom>=2.4')", p) from None
    try:
        ds = pydicom.dcmread(str(p))
    except Exception as exc:
        raise DataFormatError(f"not a readable DICOM file ({type(exc).__name__}: {exc})", p) from None
    if "PixelData" not in ds:
        raise DataFormatError("DICOM file has no pixel data (not an image)", p)
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise DataFormatError(f"cannot decode the DICOM pixel data (transfer syntax {ts}: {exc}); compressed "
                              "files may need pylibjpeg or gdcm", p) from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        warnings.warn(f"{p}: {frames} frames; using the first", stacklevel=2)
        log.warning("%s: multi-frame DICOM (%d frames); using the first", p, frames)
        arr = arr[0]
    pi = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(getattr(ds, "BitsStored", getattr(ds, "BitsAllocated", 8)) or 8)
    if spp == 3 or arr.ndim == 3:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise DataFormatError(f"DICOM colour image has unexpected shape {arr.shape}", p)
        if pi.startswith("YBR") and int(pydicom.__version__.split(".")[0]) < 3:
            from pydicom.pixel_data_handlers.util import convert_color_space

            arr = convert_color_space(arr, pi, "RGB")
        return Image.fromarray(_dicom_to_uint8(arr, bits, p), mode="RGB")
    if pi == "PALETTE COLOR":
        try:
            try:
                from pydicom.pixels import apply_color_lut
            except ImportError:
                from pydicom.pixel_data_handlers.util import apply_color_lut
            rgb = apply_color_lut(arr, ds)
        except Exception as exc:
            raise DataFormatError(f"cannot apply the DICOM palette ({exc})", p) from None
        return Image.fromarray(scale_to_uint8(rgb, 16 if rgb.dtype != np.uint8 else 8), mode="RGB")
    if arr.ndim != 2:
        raise DataFormatError(f"DICOM grey image has unexpected shape {arr.shape}", p)
    values = arr.astype(np.float64)
    slope, intercept = _first(getattr(ds, "RescaleSlope", None)), _first(getattr(ds, "RescaleIntercept", None))
    center, width = _first(getattr(ds, "WindowCenter", None)), _first(getattr(ds, "WindowWidth", None))
    if center is not None and width is not None and width >= 1:
        if slope is not None or intercept is not None:
            values = values * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)
        grey = window_to_uint8(values, center, width)
    else:
        # No VOI window: the stored values by their real bit depth (BitsStored), as PNG/TIFF are read
        # (the linear modality LUT changes units, not the place of a value in the stored range).
        if int(getattr(ds, "PixelRepresentation", 0) or 0) == 1:  # signed: shift -2^(b-1).. to 0..
            values = values + float(2 ** (bits - 1))
        grey = _dicom_to_uint8(np.clip(values, 0, None).astype(np.uint32), bits, p, int(arr.dtype.itemsize * 8))
        if slope is not None and slope < 0:
            grey = 255 - grey
    if pi == "MONOCHROME1":
        grey = 255 - grey
    elif pi != "MONOCHROME2":
        raise DataFormatError(f"unsupported DICOM photometric interpretation {pi!r}", p)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), mode="RGB")


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Any supported input file as an 8-bit RGB PIL image (errors name the file)."""
    p = Path(path)
    if not p.is_file():
        raise DataFormatError("input file not found" if not p.exists() else "expected a file", p)
    if is_dicom_file(p):
        return read_dicom(p)
    return load_image(p)


def list_inputs(path: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """``[(file, name)]`` for a file or (recursively, sorted) a folder; ``name`` is the path relative to
    the folder (the file name for a single file). Hidden files and folders are skipped."""
    p = Path(path)
    if p.is_file():
        return [(p, p.name)]
    if not p.is_dir():
        raise DataFormatError("input not found (expected an image, a DICOM file or a folder of them)", p)
    out = []
    for f in sorted(p.rglob("*")):
        rel = f.relative_to(p)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        if f.suffix.lower() in INPUT_EXTENSIONS or (f.suffix == "" and is_dicom_file(f)):
            out.append((f, rel.as_posix()))
    if not out:
        raise DataFormatError(f"no images found (extensions: {', '.join(sorted(INPUT_EXTENSIONS))})", p)
    return out
