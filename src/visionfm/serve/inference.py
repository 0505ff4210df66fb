"""Uploads → images → predictions → JSON-ready results with image layers, for ``visionfm serve``.

Everything happens in memory. An upload is accepted only when its first bytes are those of a JPEG, PNG,
TIFF, BMP, WebP or DICOM file (the name and the declared content type are not trusted); its pixel count
is read from the header and checked against a limit before anything is decoded (decompression bombs);
then it is decoded with the same readers as ``visionfm predict`` (:func:`visionfm.inference.io.read_image`,
which adds PIL's own bomb guard and the DICOM conversions). On Linux the bytes are handed to those
readers through an anonymous in-memory file (``memfd``), so nothing touches the disk.

What a result shows (class probabilities, values with units, a mask, points) is the task's
:meth:`visionfm.engine.task.Task.display`; the drawing here is the same for every task.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from visionfm.engine.task import get_task, task_names
from visionfm.errors import ConfigError, DataFormatError, UploadError
from visionfm.reports.colours import (
    ATTENTION_LAYER_SIDE,
    DISPLAY_COLOURS,
    attention_overlay,
    display_colour,
)

__all__ = ["UploadError", "sniff", "decode_upload", "run_model", "render_result", "PALETTE"]

PALETTE = DISPLAY_COLOURS  # the display colours of class 1, 2, ... (Okabe-Ito; see visionfm.reports.colours)
DISPLAY_MAX_SIDE = 768
ATTENTION_SIDE = ATTENTION_LAYER_SIDE

FORMAT_NAMES = {"jpeg": "JPEG", "png": "PNG", "tiff": "TIFF", "bmp": "BMP", "webp": "WebP", "dicom": "DICOM"}


def sniff(data: bytes) -> str | None:
    """The file type from the content's magic bytes, or ``None`` when it is not a supported image."""
    head = data[:16]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"BM") and len(data) > 26:
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if data[128:132] == b"DICM":
        return "dicom"
    return None


def _describe(data: bytes) -> str:
    head = data[:512].lstrip()
    if not data:
        return "the file is empty"
    if head[:5].lower() in (b"<!doc", b"<html") or head[:5] == b"<?xml":
        return "it looks like an HTML/XML document"
    if head.startswith(b"%PDF"):
        return "it is a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "it is a ZIP archive (or an Office document)"
    try:
        text = data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return "its content is not a recognised image format"
    if text.lstrip()[:1] in ("{", "["):
        import json

        try:
            json.loads(data)
            return "it is a JSON document"
        except ValueError:
            pass
    return "it looks like a text file"


def _pixels_in_header(data: bytes, kind: str) -> tuple[int, int, int]:
    """``(width, height, frames)`` from the header only (no pixel data is decoded)."""
    if kind == "dicom":
        import pydicom

        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception as exc:
            raise UploadError(400, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
        rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
        if rows < 1 or cols < 1:
            raise UploadError(400, "the DICOM file holds no image (no Rows/Columns)")
        return cols, rows, int(getattr(ds, "NumberOfFrames", 1) or 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return int(im.width), int(im.height), int(getattr(im, "n_frames", 1) or 1)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadError(413, f"the image is too large to decode safely ({exc})") from None
    except Exception as exc:
        raise UploadError(400, f"the {FORMAT_NAMES[kind]} file is damaged or unreadable ({type(exc).__name__}: {exc})"
                          ) from None


def _read_via_memory_file(data: bytes) -> Image.Image:
    """:func:`read_image` on bytes: through a RAM-only ``memfd`` (Linux) or a deleted-on-close temp file."""
    from visionfm.inference.io import read_image

    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("visionfm-upload", 0)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            path = f"/proc/self/fd/{fd}"
            if os.path.exists(path):
                return read_image(path)
        finally:
            os.close(fd)
    with tempfile.NamedTemporaryFile(suffix=".upload") as fh:  # pragma: no cover - non-Linux fallback
        fh.write(data)
        fh.flush()
        return read_image(fh.name)


def decode_upload(data: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    """Sniff, check the size and decode an upload; returns ``(RGB image, format name)``.

    Raises:
        UploadError: 415 for a non-image, 413 for an image over ``max_pixels``, 400 for a damaged file.
    """
    kind = sniff(data)
    if kind is None:
        raise UploadError(415, f"this file is not a supported image: {_describe(data)}. "
                               "Accepted: JPEG, PNG, TIFF, BMP, WebP and DICOM.")
    w, h, frames = _pixels_in_header(data, kind)
    total = w * h * (frames if kind == "dicom" else 1)
    if total > max_pixels:
        raise UploadError(413, f"the image is too large: {w}×{h}" + (f"×{frames} frames" if frames > 1 else "")
                               + f" = {total / 1e6:.1f} megapixels; this server accepts at most "
                                 f"{max_pixels / 1e6:.1f} megapixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multi-frame DICOM: the first frame (reported by read_dicom's log)
            image = _read_via_memory_file(data)
    except DataFormatError as exc:
        msg = str(exc)
        if msg.startswith("/proc/self/fd/"):
            msg = msg.split(": ", 1)[-1]
        raise UploadError(400, f"the {FORMAT_NAMES[kind]} file could not be read: {msg}") from None
    return image, FORMAT_NAMES[kind]


# -- running a model ------------------------------------------------------------------------------------


@dataclass
class RawResult:
    pred: dict[str, Any]
    attention: np.ndarray | None
    model_ms: float
    attention_ms: float


@torch.no_grad()
def run_model(model: Any, image: Image.Image, attention: bool = True, days: float | None = None) -> RawResult:
    """One image through a :class:`~visionfm.packaging.VisionFMModel` (call with the model's lock held)."""
    dev = next(model.parameters()).device
    t0 = time.perf_counter()
    x, sizes = model.preprocess([image])
    x = x.to(dev)
    d = None if days is None else torch.full((1,), float(days), device=dev)
    pred = model.postprocess(model(x, d), sizes)
    t1 = time.perf_counter()
    att = model.attention(x)[0].float().cpu().numpy() if attention else None
    t2 = time.perf_counter()
    return RawResult(pred, att, (t1 - t0) * 1000, (t2 - t1) * 1000)


# -- rendering ------------------------------------------------------------------------------------------


def _data_url(im: Image.Image, fmt: str = "PNG", **kw: Any) -> str:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _display_size(w: int, h: int, max_side: int = DISPLAY_MAX_SIDE) -> tuple[int, int]:
    s = min(1.0, max_side / max(w, h))
    return max(1, round(w * s)), max(1, round(h * s))


def _mask_layer(mask: np.ndarray, size: tuple[int, int], n_classes: int) -> Image.Image:
    """Class ids → a palette PNG (background transparent) at the display size."""
    m = Image.fromarray(mask.astype(np.uint8), mode="L").resize(size, Image.NEAREST)
    p = m.convert("P")
    pal = [0, 0, 0]
    for c in range(1, 256):
        pal += list(display_colour(c)) if c < max(n_classes, 2) else [0, 0, 0]
    p.putpalette(pal)
    p.info["transparency"] = 0
    return p


def _composite(display: Image.Image, mask_layer: Image.Image | None, att: np.ndarray | None,
               points: list[tuple[float, float]], scale: tuple[float, float], opacity: float = 0.45) -> Image.Image:
    out = display.convert("RGB")
    if mask_layer is not None:
        rgba = mask_layer.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3].astype(np.float64) * opacity
        rgb = np.asarray(rgba)[..., :3].astype(np.float64)
        base = np.asarray(out, dtype=np.float64)
        a = (alpha / 255.0)[..., None]
        out = Image.fromarray(np.clip(np.rint(base * (1 - a) + rgb * a), 0, 255).astype(np.uint8), mode="RGB")
    elif att is not None:
        out = attention_overlay(att, out, alpha=opacity, max_side=DISPLAY_MAX_SIDE)
    if points:
        draw = ImageDraw.Draw(out)
        r = max(4, round(min(out.size) / 60))
        for k, (x, y) in enumerate(points):
            if not (np.isfinite(x) and np.isfinite(y)):
                continue
            cx, cy = x * scale[0], y * scale[1]
            col = display_colour(k + 1)
            draw.line([(cx - r, cy), (cx + r, cy)], fill=col, width=max(2, r // 3))
            draw.line([(cx, cy - r), (cx, cy + r)], fill=col, width=max(2, r // 3))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(255, 255, 255), width=1)
    return out


def _named(entry: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """The page shows the model's own output names, never bare indices: landmarks take the names the model
    lists (``landmark_names``, else "landmark 1".."landmark K"), and a class shown by its index (a binary
    model with one class name, whose positive output the record calls ``"1"``) takes its class name."""
    names = [str(n) for n in entry.output_names]
    for k, mark in enumerate(summary.get("landmarks") or []):
        if k < len(names):
            mark["name"] = names[k]
    classes = summary.get("classes")
    if classes and names:
        if entry.task_kind == "binary" and len(names) == 1:
            by_index = {"1": names[0], "not 1": f"not {names[0]}"}
        else:
            by_index = {str(i): n for i, n in enumerate(names)} | {f"not {i}": f"not {n}" for i, n in enumerate(names)}
        for c in classes:
            if c["name"] not in names:
                c["name"] = by_index.get(str(c["name"]), c["name"])
    return summary


def render_result(entry: Any, record: dict[str, Any], raw: RawResult, image: Image.Image, *,
                  overlay: bool = True) -> dict[str, Any]:
    """The JSON the page and programs get: sorted classes / values with units / segmentation areas /
    landmarks, plus image layers as data URLs (``image``, ``attention``, ``mask``) and ``overlay_png``."""
    w, h = image.size
    dsize = _display_size(w, h)
    display = image if image.size == dsize else image.resize(dsize, Image.BILINEAR)
    shown = get_task(entry.task).display(entry.config, record, raw.pred, list(entry.output_names), list(entry.units))
    out: dict[str, Any] = _named(entry, dict(shown.summary))
    mask_layer = _mask_layer(shown.mask, dsize, shown.n_classes) if shown.mask is not None else None
    points = list(shown.points)
    layers: dict[str, str | None] = {
        "image": _data_url(display.convert("RGB"), "JPEG", quality=88),
        "attention": _data_url(attention_overlay(raw.attention, layer_side=ATTENTION_SIDE,
                                                fov_image=display.convert("RGB")))
        if raw.attention is not None else None,
        "mask": _data_url(mask_layer, optimize=False) if mask_layer is not None else None,
    }
    out["layers"] = layers
    out["display_size"] = {"width": dsize[0], "height": dsize[1]}
    if overlay:
        scale = (dsize[0] / w, dsize[1] / h)
        comp = _composite(display, mask_layer, raw.attention, points, scale)
        out["overlay_png"] = _data_url(comp, compress_level=3)
    else:
        out["overlay_png"] = None
    return out


def check_days(entry: Any, days: float | None) -> float | None:
    """A task that takes a horizon (forecasting) needs one within ``[0, max_days]``; other tasks take none."""
    if entry.needs_days:
        if days is None:
            raise ConfigError(f"this is a {entry.task} model: give the horizon in days (0 to {entry.max_days:g})")
        if not 0 <= float(days) <= float(entry.max_days):
            raise ConfigError(f"days must be between 0 and {entry.max_days:g} for this model, got {days:g}")
        return float(days)
    if days is not None:
        takes_days = " or ".join(task_names(needs_days=True))
        raise ConfigError(f"days only applies to {takes_days} models; this one is a {entry.task} model")
    return None
