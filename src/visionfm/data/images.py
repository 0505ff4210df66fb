"""File I/O shared by every dataset reader: images, class-id masks, label text files, folder listings,
and the ``on_error`` policy.

The original code opened files ad hoc and, on failure, silently substituted a random other sample
(reference §2.2, §2.3, item 30). Here every failure is a :class:`DataFormatError` that names the
file, and skipping a bad file is an explicit, logged choice (``on_error="skip"``).
"""

from __future__ import annotations

import abc
import io
import logging
import math
import operator
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from visionfm.errors import ConfigError, DataFormatError

__all__ = [
    "load_image_bytes",
    "IMAGE_EXTENSIONS",
    "LOSSY_MASK_FORMATS",
    "OnErrorPolicy",
    "ON_ERROR_POLICIES",
    "SampleDataset",
    "check_on_error",
    "is_image_file",
    "list_images",
    "list_subdirs",
    "load_image",
    "load_mask",
    "read_jpeg",
    "EncodedJPEG",
    "read_label_lines",
    "recorded_bits",
    "resolve_split",
    "scale_to_uint8",
    "significant_bits",
]

logger = logging.getLogger("visionfm.data")

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})
#: Formats refused as masks (decoded format, not the file name): lossy compression alters class ids.
LOSSY_MASK_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO"})

OnErrorPolicy = Literal["fail", "skip"]
ON_ERROR_POLICIES: tuple[str, ...] = get_args(OnErrorPolicy)

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------------
# File names and folders


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when the file name has an image extension (case-insensitive); the file is not opened."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _hidden(name: str) -> bool:
    # Skips ".DS_Store"-style litter and macOS "._x.jpg" resource forks, which are not images.
    return name.startswith(".")


def list_subdirs(folder: str | os.PathLike[str]) -> list[Path]:
    """Non-hidden immediate sub-directories, sorted by name (the original used unsorted os.listdir)."""
    folder = Path(folder)
    return sorted((p for p in folder.iterdir() if p.is_dir() and not _hidden(p.name)), key=lambda p: p.name)


def list_images(folder: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (hidden entries excluded), sorted by relative path for determinism.

    Symlinked directories are followed, each real directory visited once so link loops terminate.
    """
    folder = Path(folder)
    found: list[Path] = []
    if not recursive:
        found = [p for p in folder.iterdir() if not _hidden(p.name) and is_image_file(p) and not p.is_dir()]
    else:

        def walk_error(exc: OSError) -> None:
            raise DataFormatError(f"cannot list folder ({exc.strerror or exc})", exc.filename or folder)

        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(folder, onerror=walk_error, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = [d for d in dirnames if not _hidden(d)]
            found.extend(Path(dirpath, f) for f in filenames if not _hidden(f) and is_image_file(f))
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def resolve_split(split: str, choices: Sequence[str]) -> str:
    """Map a split name to the spelling a layout uses on disk ("train" ↔ "training", "validation" → "val").

    Layouts disagree (vfm uses ``training``, ImageNet/RETFound use ``train``); callers should not care.
    """
    roles = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
             "test": "test", "testing": "test"}  # fmt: skip
    role = roles.get(str(split).strip().lower())
    for choice in choices:
        if role is not None and roles.get(choice) == role:
            return choice
    raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(choices)}")


def read_label_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, stripped_text)`` for each data line; blank and ``#`` comment lines are skipped.

    The original could not read the comment lines its own README shows (reference item 13).
    A UTF-8 byte-order mark is tolerated because spreadsheet exports add one.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataFormatError("label file not found", path) from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"label file is not UTF-8 text ({exc.reason} at byte {exc.start})", path) from None
    except OSError as exc:
        raise DataFormatError(f"cannot read label file ({exc.strerror or exc})", path) from None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


# --------------------------------------------------------------------------------------------------
# Decoding


def _reduce_jpeg(img: Image.Image, min_pixels: int) -> None:
    """Ask the JPEG decoder for the smallest DCT scale (1/2, 1/4, 1/8) that keeps ≥ ``min_pixels``.

    ``Image.draft`` decodes at the reduced scale directly (no full-size pass) and returns at least
    the requested size in both directions; other formats are left alone.
    """
    if img.format != "JPEG" or min_pixels <= 0:
        return
    w, h = img.size
    scale = math.sqrt(min_pixels / float(w * h))
    if scale > 0.5:
        return
    img.draft(None, (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))


def _decode(
    path: str | os.PathLike[str], what: str, convert: Callable[[Image.Image], _T], min_pixels: int = 0
) -> _T:
    """Open, fully decode (so truncated files fail here, not inside a transform) and convert one file.

    ``min_pixels > 0`` lets a JPEG decode at a reduced DCT scale that keeps at least that many pixels.
    """
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{what} file not found", path)
    if path.is_dir():
        raise DataFormatError(f"expected an {what} file, found a directory", path)
    try:
        with Image.open(path) as img:
            if min_pixels:
                _reduce_jpeg(img, min_pixels)
            img.load()
            return convert(img)
    except DataFormatError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataFormatError(
            f"{what} is too large to decode safely ({exc}); this guard stops decompression bombs — "
            "if the file is trusted, raise PIL.Image.MAX_IMAGE_PIXELS",
            path,
        ) from None
    except PermissionError:
        raise DataFormatError(f"cannot read {what}: permission denied", path) from None
    except Image.UnidentifiedImageError:
        raise DataFormatError(f"not a readable {what} (unknown format or corrupt header)", path) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        # PIL reports truncated or damaged data with any of these.
        raise DataFormatError(f"corrupt or truncated {what} ({type(exc).__name__}: {exc})", path) from None


_LOW_BITS_WARNED: list[bool] = [False]  # the "data in the low bits" warning is given once per process

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_sbit(path: str | os.PathLike[str]) -> tuple[int, ...] | None:
    """The PNG ``sBIT`` chunk (significant bits per channel), read from the chunk list before ``IDAT``;
    ``None`` when there is none (Pillow does not expose it)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != _PNG_SIGNATURE:
                return None
            while True:
                head = fh.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                if kind in (b"IDAT", b"IEND"):
                    return None
                if kind == b"sBIT":
                    data = fh.read(length)
                    return tuple(data) if 0 < len(data) == length else None
                fh.seek(length + 4, os.SEEK_CUR)
    except OSError:
        return None


def recorded_bits(img: Image.Image, path: str | os.PathLike[str] | None = None) -> int | None:
    """The significant bits per sample the file records: PNG ``sBIT`` (the grey or the largest colour
    channel's), TIFF ``BitsPerSample``; ``None`` when the file records nothing."""
    path = path if path is not None else getattr(img, "filename", None)
    if img.format == "PNG" and path:
        sbit = _png_sbit(path)
        if sbit:
            return int(sbit[0]) if img.mode in ("L", "LA", "I", "I;16", "I;16B", "I;16L") else int(max(sbit[:3]))
    if img.format == "TIFF":
        bps = getattr(img, "tag_v2", {}).get(258)
        bits = (int(max(bps)) if isinstance(bps, tuple) else int(bps)) if bps else None
        # 8/16/32 is the sample type itself (TIFF must state it), not a record of fewer significant bits
        return None if bits in (None, 8, 16, 32) else bits
    return None


def _type_bits(img: Image.Image) -> int:
    """Bits of the file's integer sample type (``I;16*`` 16, ``I`` 16 for PNG else 32)."""
    if img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):
        return 16
    return 32


def scale_to_uint8(arr: np.ndarray, bits: int) -> np.ndarray:
    """Integer samples with ``bits`` significant bits → uint8: ``round(v * 255 / (2**bits - 1))``, clipped to
    0..255 (so 0 → 0 and the largest ``bits``-bit value → 255). The one scaling of every reader: PNG, TIFF
    and DICOM, for training and for ``predict``. 8-bit input is returned unchanged."""
    if arr.dtype == np.uint8 and bits == 8:
        return arr
    peak = float(2 ** max(int(bits), 1) - 1)
    return np.clip(np.rint(arr.astype(np.float64) * (255.0 / peak)), 0, 255).astype(np.uint8)


def significant_bits(arr: np.ndarray, type_bits: int, recorded: int | None, path: object = None) -> int:
    """How many bits to scale ``arr`` by (see :func:`scale_to_uint8`); the convention, also in
    ``docs/data-layouts.md``:

    * the file records its significant bits ``b`` (PNG ``sBIT``, TIFF ``BitsPerSample``, DICOM ``BitsStored``)
      and every value fits in ``b`` bits: the data are in the low bits (as cameras and most writers store
      12-bit data in 16-bit files) → scaled by ``2**b - 1``;
    * the record says ``b`` but values exceed ``2**b - 1``: the samples were scaled up to the full type as the
      PNG specification asks of an encoder writing ``sBIT`` → scaled by the type's maximum;
    * no record: the type's maximum (``2**16 - 1`` for 16-bit files), and a warning (once per process) when
      the values use at most ``type_bits - 2`` bits, i.e. when the picture would come out dark.
    """
    peak = int(arr.max()) if arr.size else 0
    if recorded is not None and 1 <= recorded < type_bits:
        return recorded if peak <= 2**recorded - 1 else type_bits
    if recorded is None and type_bits > 8 and 0 < peak and peak.bit_length() <= type_bits - 2 \
            and not _LOW_BITS_WARNED[0]:
        _LOW_BITS_WARNED[0] = True
        used = peak.bit_length()
        logger.warning(
            "%s: %d-bit image whose values use only the low %d bits (max %d) and that records no significant "
            "bits (PNG sBIT, TIFF BitsPerSample); scaled by the %d-bit maximum %d, so it comes out dark — if the "
            "data are %d-bit, record that in the file (e.g. an sBIT chunk). Further such files are not reported.",
            path if path is not None else "image", type_bits, used, peak, type_bits, 2**type_bits - 1, used)
    return type_bits


def _wide_to_uint8(arr: np.ndarray, type_bits: int = 16, recorded: int | None = None, path: object = None
                   ) -> np.ndarray:
    """16-bit / 32-bit integer or float grayscale → 8-bit, by the real bit depth (:func:`significant_bits`).

    Floats are read as 0..1 when every value is at most 1, else as 0..255 (clipped); NaN becomes 0."""
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64))
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if arr.size and int(arr.min()) < 0:
        raise DataFormatError(f"image has negative sample values (min {int(arr.min())}); expected unsigned "
                              "integer samples", path)
    return scale_to_uint8(arr, significant_bits(arr, type_bits, recorded, path))


def _to_rgb(img: Image.Image, path: str | os.PathLike[str] | None = None) -> Image.Image:
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        arr = np.asarray(img)
        if img.mode == "F":
            img = Image.fromarray(_wide_to_uint8(arr, path=path))
        else:
            bits = _type_bits(img)
            img = Image.fromarray(_wide_to_uint8(arr, bits, recorded_bits(img, path), path or img.filename))
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's warning about byte transparency in palettes
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(path: str | os.PathLike[str], min_pixels: int = 0) -> Image.Image:
    """Load an image as fully decoded 8-bit RGB.

    Grayscale, palette, alpha and 16-bit files are converted; wide integer samples are scaled by the
    file's real bit depth (PNG ``sBIT``, TIFF ``BitsPerSample``, else the type's maximum; see
    :func:`significant_bits`), never clipped.
    With ``min_pixels > 0`` a JPEG is decoded at the smallest DCT scale (1, 1/2, 1/4, 1/8 per side)
    that still holds ``min_pixels`` pixels, which is several times faster for large photographs
    (see :func:`visionfm.pretrain.views.min_decode_pixels` for the bound pretraining uses).
    Raises:
        DataFormatError: naming the path, for missing, unreadable, corrupt, truncated or oversized files.
    """
    return _decode(path, "image", lambda img: _to_rgb(img, path), min_pixels)


def load_image_bytes(data: bytes, name: str, min_pixels: int = 0) -> Image.Image:
    """:func:`load_image` for an encoded image held in memory (e.g. a tar-shard member); errors name ``name``."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if min_pixels:
                _reduce_jpeg(img, min_pixels)
            img.load()
            return _to_rgb(img, name)
    except DataFormatError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataFormatError(f"image is too large to decode safely ({exc})", name) from None
    except (Image.UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise DataFormatError(f"not a readable image ({exc.__class__.__name__}: {exc})", name) from None


class EncodedJPEG:
    """A JPEG file's bytes and header size, for decoding later on the GPU (``--decode gpu``)."""

    __slots__ = ("data", "size", "path")

    def __init__(self, data: bytes, size: tuple[int, int], path: str) -> None:
        self.data, self.size, self.path = data, size, path


def read_jpeg(path: str | os.PathLike[str]) -> EncodedJPEG | None:
    """The bytes of a baseline/progressive RGB or grayscale JPEG with its header size, or ``None``
    for any other file (decode those with :func:`load_image`). Only the header is parsed here; a
    file that is damaged past its header fails when it is decoded, naming the file."""
    path = Path(path)
    if path.suffix.lower() not in (".jpg", ".jpeg"):
        return None
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:  # the header, from the bytes read once
            fmt, size, mode = img.format, img.size, img.mode
    except FileNotFoundError:
        raise DataFormatError("image file not found", path) from None
    except (Image.UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataFormatError(f"not a readable image ({type(exc).__name__}: {exc})", path) from None
    if fmt != "JPEG" or mode not in ("RGB", "L"):
        return None  # CMYK and the like: the CPU decoder converts them
    return EncodedJPEG(data, size, str(path))


def _mask_ids(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode in ("P", "L", "1", "I") or mode.startswith("I;16"):
        arr = np.asarray(img)  # for "P" these are the palette indices, i.e. the class ids
    elif mode in ("LA", "PA"):
        arr = np.asarray(img)[..., 0]
    elif mode == "F":
        arr = np.asarray(img)
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DataFormatError("float mask has non-integer values; class ids must be integers", path)
    elif mode in ("RGB", "RGBA"):
        rgb = np.asarray(img)[..., :3]
        differs = (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 0] != rgb[..., 2])
        if differs.any():
            y, x = (int(v) for v in np.argwhere(differs)[0])
            colour = tuple(int(c) for c in rgb[y, x])
            raise DataFormatError(
                f"mask is a colour {mode} image (pixel x={x}, y={y} is {colour}); class ids must be stored "
                "as a grayscale ('L') or palette ('P') PNG with one integer id per pixel — "
                "convert the colour map to ids first",
                path,
            )
        arr = rgb[..., 0]
    else:
        raise DataFormatError(
            f"unsupported mask mode {mode!r}; store class ids as a grayscale ('L') or palette ('P') PNG", path
        )
    return np.array(arr, dtype=np.int64)


def load_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Load a segmentation mask as class ids, ``int64 [H, W]``.

    Palette PNGs keep their indices (the original converted them to RGB and lost them, item 14);
    grayscale and 16-bit masks keep their values; RGB masks are accepted only when gray (R=G=B).
    JPEG masks are refused, whatever their name: lossy compression alters ids at every edge.
    """
    path = Path(path)

    def convert(img: Image.Image) -> np.ndarray:
        if img.format in LOSSY_MASK_FORMATS:
            raise DataFormatError(
                f"mask is a {img.format} file; lossy compression changes class ids along every edge — store "
                "masks losslessly (PNG, TIFF or BMP) with one integer class id per pixel", path)
        return _mask_ids(img, path)

    return _decode(path, "mask", convert)


# --------------------------------------------------------------------------------------------------
# The on_error policy, shared by every reader


def check_on_error(on_error: str) -> OnErrorPolicy:
    if on_error not in ON_ERROR_POLICIES:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR_POLICIES)}, got {on_error!r}")
    return on_error  # type: ignore[return-value]


class SampleDataset(Dataset, abc.ABC):  # type: ignore[type-arg]
    """Base class of every reader: bounds checking plus the ``on_error`` policy, implemented once.

    Subclasses implement ``__len__`` and ``_load(index)``. With ``on_error="fail"`` a bad file raises
    its :class:`DataFormatError`. With ``"skip"`` the bad file is logged once, recorded in
    ``skipped_paths`` and the next readable sample (index + 1, wrapping) is returned instead; only when
    no sample is readable does it raise. Only DataFormatError is skipped: a bug in a transform still
    surfaces. With DataLoader workers each worker keeps its own ``skipped_paths``.
    """

    root: Path

    def __init__(self, on_error: str = "fail") -> None:
        self.on_error: OnErrorPolicy = check_on_error(on_error)
        self.skipped_paths: set[str] = set()
        self._bad_indices: set[int] = set()

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def _load(self, index: int) -> Any: ...

    def __getitem__(self, index: int) -> Any:
        n = len(self)
        index = operator.index(index)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        index %= n
        if self.on_error == "fail":
            return self._load(index)
        first_error: DataFormatError | None = None
        for step in range(n):
            i = (index + step) % n
            if i in self._bad_indices:
                continue
            try:
                return self._load(i)
            except DataFormatError as exc:
                self._bad_indices.add(i)
                self.skipped_paths.add(str(exc.path) if exc.path is not None else f"<sample {i}>")
                logger.warning("skipping unreadable sample (on_error='skip'): %s", exc)
                first_error = first_error or exc
        detail = f"; first error: {first_error}" if first_error else "; see the warnings logged earlier"
        raise DataFormatError(
            f"none of the {n} samples could be read with on_error='skip'{detail}", getattr(self, "root", None)
        )
