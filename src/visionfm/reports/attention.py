"""Attention maps that can be read: smooth, confined to the field of view, perceptually uniform colours.

The encoder gives one value per patch (a 4 × 4 grid for a 64 px input with 16 px patches). Here that
grid becomes a picture:

* :func:`upsample_attention` — bicubic up-sampling (``torch.nn.functional.interpolate``) to the
  image's size, so the map has no patch blocks;
* :func:`field_of_view` — the bright, roughly circular field of view of a fundus photograph, found in
  the image itself (luminance above a small threshold, then morphological clean-up), and only when
  the image has a dark border; pixels outside it get no attention;
* :func:`attention_weights` — the map normalised to [0, 1] inside the field of view (0 outside), so its
  peak is always on the retina and never in the black corners;
* :func:`blend_attention` — the map coloured with :data:`ATTENTION_CMAP` (``viridis``) over the image,
  its opacity growing with the attention (low attention leaves the photo visible);
* :func:`save_attention_figure` — image and overlay side by side with a colour bar
  ("attention, relative"), as ``visionfm predict`` writes ``attention/<name>.png``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "ATTENTION_CMAP",
    "ATTENTION_METHOD_LABELS",
    "attention_weights",
    "blend_attention",
    "field_of_view",
    "save_attention_figure",
    "upsample_attention",
]

#: perceptually uniform and readable by people with the common colour-vision deficiencies; its yellow
#: peak stands out on the orange-red of a fundus photograph.
ATTENTION_CMAP = "viridis"
#: how each ``method`` of :meth:`visionfm.packaging.VisionFMModel.attention` is named in figures.
ATTENTION_METHOD_LABELS = {
    "last": "last block, CLS → patches, mean over heads",
    "rollout": "attention rollout over all blocks",
}

_LUMA = np.array([0.299, 0.587, 0.114])


def upsample_attention(attention: Any, size: tuple[int, int]) -> np.ndarray:
    """A ``[gh, gw]`` map → ``[h, w]`` float64 for ``size = (w, h)``, bicubic, clipped to the input's range."""
    import torch
    import torch.nn.functional as F

    a = np.asarray(attention, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"attention must be a [gh, gw] map, got shape {tuple(a.shape)}")
    w, h = int(size[0]), int(size[1])
    t = torch.from_numpy(a)[None, None]
    up = F.interpolate(t, size=(h, w), mode="bicubic", align_corners=False)[0, 0].numpy()
    # bicubic overshoots a little next to sharp steps; keep the values inside the grid's range
    return np.clip(up, a.min(), a.max())


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return xx * xx + yy * yy <= radius * radius


def field_of_view(image: Image.Image | np.ndarray, threshold: float | None = None) -> np.ndarray | None:
    """The field of view ``[h, w]`` (bool) of a photograph with a dark border, or ``None`` without one.

    Pixels brighter than ``threshold`` (luminance 0-255; default ``max(10, 8 %`` of the 99th
    percentile)) are candidates; a morphological opening removes bright specks in the border (noise,
    burnt-in text), the largest connected region is kept and its holes (dark vessels, lesions) are
    filled. ``None`` — use the whole image — unless at least three image corners are dark and the
    region looks like a (possibly flattened) disc covering 15-98 % of the image.
    """
    from scipy import ndimage

    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64)
    lum = rgb @ _LUMA if rgb.ndim == 3 else rgb
    h, w = lum.shape
    if min(h, w) < 8:
        return None
    thr = max(10.0, 0.08 * float(np.percentile(lum, 99))) if threshold is None else float(threshold)
    bright = lum > thr
    k = max(2, round(0.04 * min(h, w)))
    corners = (bright[:k, :k], bright[:k, -k:], bright[-k:, :k], bright[-k:, -k:])
    if sum(float(c.mean()) < 0.1 for c in corners) < 3:
        return None
    mask = ndimage.binary_opening(bright, structure=_disk(max(1, round(0.01 * min(h, w)))))
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    mask = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    ellipse = np.pi / 4 * (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    # a full disc fills pi/4 of its box; a disc cut flat at top and bottom fills more (up to the box)
    if not (0.15 <= float(mask.mean()) <= 0.98 and 0.8 <= float(mask.sum()) / ellipse <= 1.3):
        return None
    return mask


def _masked_upsample(grid: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Up-sampling that ignores the patches outside the field of view (normalised convolution): each
    patch counts with the share of its pixels inside ``mask``, so attention on the black corners does
    not bleed onto the rim of the retina."""
    import torch
    import torch.nn.functional as F

    cover = F.adaptive_avg_pool2d(torch.from_numpy(mask.astype(np.float64))[None, None], grid.shape)[0, 0].numpy()
    num = upsample_attention(grid * cover, size)
    den = upsample_attention(cover, size)
    lo, hi = float(grid.min()), float(grid.max())
    return np.clip(num / np.maximum(den, 0.05), lo, hi)


def attention_weights(attention: Any, size: tuple[int, int], image: Image.Image | np.ndarray | None = None,
                      fov: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """``(weights [h, w] in [0, 1], field of view or None)`` for ``size = (w, h)``.

    The map is up-sampled (:func:`upsample_attention`), then, with ``fov`` and an ``image`` (already at
    ``size``) that has a dark border, set to 0 outside its field of view (:func:`field_of_view`); it is
    min-max normalised over the pixels that count, so 1 is the peak inside the field of view.
    """
    mask = field_of_view(image) if (fov and image is not None) else None
    if mask is None:
        a = upsample_attention(attention, size)
        inside = a
    else:
        a = _masked_upsample(np.asarray(attention, dtype=np.float64), mask, size)
        inside = a[mask]
    lo, hi = float(inside.min()), float(inside.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    a = np.clip(a, 0.0, 1.0)
    if mask is not None:
        a[~mask] = 0.0
    return a, mask


def blend_attention(weights: np.ndarray, image: Image.Image, alpha: float = 0.6, cmap: str = ATTENTION_CMAP
                    ) -> Image.Image:
    """``image`` (RGB, same size as ``weights``) with the coloured map over it, opacity ``alpha × weight``."""
    import matplotlib

    base = np.asarray(image.convert("RGB"), dtype=np.float64)
    heat = matplotlib.colormaps[cmap](weights)[..., :3] * 255.0
    a = (float(alpha) * weights)[..., None]
    return Image.fromarray(np.clip(np.rint(base * (1 - a) + heat * a), 0, 255).astype(np.uint8), mode="RGB")


def _canvas(image: Image.Image, min_side: int, max_side: int) -> Image.Image:
    """The image at a drawing size: longer side clamped to [min_side, max_side], bicubic."""
    img = image.convert("RGB")
    long_side = max(img.size)
    target = min(max(long_side, min_side), max_side)
    if target == long_side:
        return img
    s = target / long_side
    return img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.BICUBIC)


def save_attention_figure(attention: Any, image: Image.Image, path: str | os.PathLike[str], *,
                          method: str = "last", title: str | None = None, alpha: float = 0.6,
                          cmap: str = ATTENTION_CMAP, fov: bool = True, min_side: int = 384,
                          max_side: int = 768) -> Path:
    """The image and its attention overlay side by side, with a colour bar "attention, relative"; a PNG.

    Args:
        attention: ``[gh, gw]`` map (:meth:`visionfm.packaging.VisionFMModel.attention` of one image).
        image: the photograph (any size; drawn with its longer side in ``[min_side, max_side]``).
        path: the PNG to write (atomically).
        method: the attention ``method`` behind the map, named under the overlay.
        title: figure title (e.g. the file name).
        alpha: opacity of the colour at the map's peak.
        fov: confine the map to the field of view of a photograph with a dark border.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    from visionfm.io.atomic import atomic_path

    img = _canvas(image, min_side, max_side)
    weights, mask = attention_weights(attention, img.size, img, fov=fov)
    overlay = blend_attention(weights, img, alpha=alpha, cmap=cmap)
    aspect = img.height / img.width
    fig = Figure(figsize=(7.4, 3.2 * aspect + (0.9 if title else 0.6)), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax_img, ax_att = fig.subplots(1, 2)
    ax_img.imshow(np.asarray(img))
    ax_img.set_title("image", fontsize=9)
    ax_att.imshow(np.asarray(overlay))
    where = "inside the field of view" if mask is not None else "over the whole image"
    ax_att.set_title(f"attention ({ATTENTION_METHOD_LABELS.get(method, method)})", fontsize=9)
    ax_att.set_xlabel(f"normalised {where}; opacity grows with attention", fontsize=8)
    for ax in (ax_img, ax_att):
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), matplotlib.colormaps[cmap]), ax=ax_att,
                       fraction=0.05, pad=0.02)
    bar.set_label("attention, relative", fontsize=8)
    bar.set_ticks([0.0, 0.5, 1.0])
    bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    dest = Path(path)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", facecolor="white")
    return dest
