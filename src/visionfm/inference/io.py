"""Reading inputs for inference: JPEG/PNG/TIFF/BMP/WebP through :func:`visionfm.data.images.load_image`,
DICOM through pydicom, all as 8-bit RGB PIL images.

DICOM handling (:func:`read_dicom`, :func:`read_dicom_frames`), through pydicom's own functions
(``pydicom.pixels`` from 3.0, ``pydicom.pixel_data_handlers.util`` in 2.x):

* grey images with a VOI (a ``VOILUTSequence`` or ``WindowCenter`` / ``WindowWidth``):
  ``apply_modality_lut`` (rescale slope / intercept or a modality LUT), then ``apply_voi_lut``
  (the first window, with its ``VOILUTFunction``; a VOI LUT is preferred), and pydicom's output
  range is mapped onto 0..255;
* grey images without a VOI: the stored values scaled by their real bit depth (``BitsStored``, the
  rule of :func:`visionfm.data.images.significant_bits`, as for PNG and TIFF);
* ``MONOCHROME1`` (white = low values) is inverted so that the result reads like ``MONOCHROME2``;
* ``YBR_FULL`` / ``YBR_FULL_422`` go through ``convert_color_space`` to RGB; colour with more than 8
  bits is scaled to 8 bits;
* ``PALETTE COLOR`` goes through ``apply_color_lut``;
* multi-frame files are decoded as a stack: :func:`read_dicom_frames` returns every frame;
  :func:`read_dicom` (and so ``visionfm predict`` and the web app, one image per file) the first
  frame, with a warning.
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

__all__ = ["DICOM_EXTENSIONS", "INPUT_EXTENSIONS", "is_dicom_file", "read_dicom", "read_dicom_frames", "read_image",
           "list_inputs"]

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


def _pixel_functions() -> Any:
    """pydicom's pixel processing functions (``pydicom.pixels`` from 3.0, ``pixel_data_handlers.util`` in 2.x)."""
    try:
        from pydicom import pixels
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers import util

        return util
    return pixels


def _decode(ds: Any, p: Path, first_only: bool) -> np.ndarray:
    """The stored pixel values as ``[F, H, W]`` or ``[F, H, W, 3]`` (colour in its stored colour space)."""
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if hasattr(ds, "pixel_array_options"):  # pydicom 3: no implicit YBR -> RGB, only the frames needed
        ds.pixel_array_options(index=0 if (first_only and frames > 1) else None, as_rgb=False)
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise DataFormatError(f"cannot decode the DICOM pixel data (transfer syntax {ts}: {exc}); compressed "
                              "files may need pylibjpeg or gdcm", p) from None
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    frame_ndim = 3 if spp == 3 else 2
    if arr.ndim == frame_ndim:
        arr = arr[None]
    if arr.ndim != frame_ndim + 1 or (spp == 3 and arr.shape[-1] != 3):
        kind = "colour" if spp == 3 else "grey"
        raise DataFormatError(f"DICOM {kind} image has unexpected shape {arr.shape} ({frames} frame(s))", p)
    return arr[:1] if first_only else arr


def _grey_to_uint8(arr: np.ndarray, ds: Any, p: Path, pixels: Any) -> np.ndarray:
    """Grey frames → uint8: modality LUT and VOI (window or VOI LUT) through pydicom, else by ``BitsStored``."""
    bits = int(getattr(ds, "BitsStored", getattr(ds, "BitsAllocated", 8)) or 8)
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    if has_window or "VOILUTSequence" in ds:
        try:
            out = pixels.apply_voi_lut(pixels.apply_modality_lut(arr, ds), ds, index=0)
            if "VOILUTSequence" in ds:  # preferred by pydicom; entries have LUTDescriptor[2] bits (PS3.3 C.11.2.1.1)
                lo, hi = 0.0, 2.0 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
            else:  # pydicom maps a window onto an output range it does not return: the window of far-out values
                with np.errstate(over="ignore"):
                    lo, hi = (float(v) for v in pixels.apply_voi_lut(np.array([-1e300, 1e300]), ds, index=0))
        except (ValueError, IndexError, KeyError, AttributeError, TypeError) as exc:
            raise DataFormatError(f"invalid DICOM VOI window or LUT ({exc})", p) from None
        scaled = (np.asarray(out, dtype=np.float64) - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros(out.shape)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    # No VOI: the stored values by their real bit depth (BitsStored), as PNG/TIFF are read (the linear
    # modality LUT changes units, not the place of a value in the stored range).
    values = arr.astype(np.float64)
    if int(getattr(ds, "PixelRepresentation", 0) or 0) == 1:  # signed: shift -2^(b-1).. to 0..
        values = values + float(2 ** (bits - 1))
    grey = _dicom_to_uint8(np.clip(values, 0, None).astype(np.uint32), bits, p, int(arr.dtype.itemsize * 8))
    slope = _first(getattr(ds, "RescaleSlope", None))
    return 255 - grey if slope is not None and slope < 0 else grey


def _read_dicom_frames(path: str | os.PathLike[str], first_only: bool) -> list[Image.Image]:
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
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if first_only and frames > 1:
        warnings.warn(f"{p}: {frames} frames; using the first", stacklevel=3)
        log.warning("%s: multi-frame DICOM (%d frames); using the first", p, frames)
    arr = _decode(ds, p, first_only)
    pixels = _pixel_functions()
    pi = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(getattr(ds, "BitsStored", getattr(ds, "BitsAllocated", 8)) or 8)
    if arr.ndim == 4:
        if pi in ("YBR_FULL", "YBR_FULL_422"):
            arr = pixels.convert_color_space(arr, pi, "RGB")
        elif pi not in ("RGB", "YBR_ICT", "YBR_RCT"):  # JPEG 2000 decoders already return RGB for ICT/RCT
            raise DataFormatError(f"unsupported DICOM colour photometric interpretation {pi!r}", p)
        rgb = _dicom_to_uint8(arr, bits, p)
        return [Image.fromarray(f, mode="RGB") for f in rgb]
    if pi == "PALETTE COLOR":
        try:
            rgb = np.asarray(pixels.apply_color_lut(arr, ds))
        except Exception as exc:
            raise DataFormatError(f"cannot apply the DICOM palette ({exc})", p) from None
        rgb8 = scale_to_uint8(rgb, 16 if rgb.dtype != np.uint8 else 8)
        return [Image.fromarray(f, mode="RGB") for f in rgb8]
    if pi not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataFormatError(f"unsupported DICOM photometric interpretation {pi!r}", p)
    grey = _grey_to_uint8(arr, ds, p, pixels)
    if pi == "MONOCHROME1":  # white = low values: inverted to read like MONOCHROME2
        grey = 255 - grey
    return [Image.fromarray(np.repeat(f[..., None], 3, axis=2), mode="RGB") for f in grey]


def read_dicom(path: str | os.PathLike[str]) -> Image.Image:
    """A DICOM file as one 8-bit RGB image; a multi-frame file gives its first frame, with a warning
    (``visionfm predict`` and the web app score one image per file; :func:`read_dicom_frames` gives all)."""
    return _read_dicom_frames(path, first_only=True)[0]


def read_dicom_frames(path: str | os.PathLike[str]) -> list[Image.Image]:
    """Every frame of a DICOM file, in order, as 8-bit RGB images (one for a single-frame file)."""
    return _read_dicom_frames(path, first_only=False)


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
