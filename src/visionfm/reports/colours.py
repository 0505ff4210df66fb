"""The colours and heat maps that ``visionfm predict`` and the web app share (one place for both).

* :data:`MASK_PALETTE` — the palette of class-id PNGs (``predict``'s ``masks/<name>.png``, the
  segmentation training run's mask files): class 0 black, 1 white, then red, blue, green, ...;
* :data:`DISPLAY_COLOURS` — the Okabe-Ito colours (distinguishable with the common colour-vision
  deficiencies) of mask classes 1, 2, ... and landmarks 1, 2, ... in the web app
  (:func:`display_colour`, :func:`hex_colour`);
* :func:`attention_overlay` — the encoder's attention map as a ``viridis`` heat map, blended over an image
  (``predict``'s ``attention/<name>.png``, the web app's composite) or as a see-through layer (the web
  app's attention layer).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = [
    "ATTENTION_LAYER_SIDE",
    "DISPLAY_COLOURS",
    "MASK_PALETTE",
    "attention_overlay",
    "display_colour",
    "hex_colour",
    "mask_palette",
    "mask_png",
]

#: flat ``[r, g, b, r, g, b, ...]`` for class ids 0, 1, 2, ... of saved class-id PNGs.
MASK_PALETTE = [0, 0, 0, 255, 255, 255, 255, 64, 64, 64, 160, 255, 64, 200, 64, 255, 200, 0, 200, 0, 200, 0, 200, 200]
#: Okabe-Ito colours of class (or landmark) 1, 2, ...; they repeat after the last one.
DISPLAY_COLOURS = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (204, 121, 167), (213, 94, 0),
                   (0, 114, 178), (255, 255, 255)]
#: side of the web app's attention layer (the browser scales it over the image).
ATTENTION_LAYER_SIDE = 224


def mask_palette() -> list[int]:
    """:data:`MASK_PALETTE` padded with black to the 256 entries of a ``P``-mode PNG."""
    return MASK_PALETTE + [0] * (768 - len(MASK_PALETTE))


def mask_png(mask: np.ndarray) -> Image.Image:
    """Class ids ``[h, w]`` (0-255) → a ``P``-mode image with :data:`MASK_PALETTE` (ids kept as pixel values)."""
    png = Image.fromarray(mask.astype(np.uint8), mode="P")
    png.putpalette(mask_palette())
    return png


def display_colour(i: int) -> tuple[int, int, int]:
    """The web app's colour of class / landmark ``i`` (1-based; 0 is the background and wraps to the last)."""
    return DISPLAY_COLOURS[(i - 1) % len(DISPLAY_COLOURS)]


def hex_colour(rgb: tuple[int, int, int]) -> str:
    """``(230, 159, 0)`` → ``"#e69f00"``."""
    r, g, b = rgb
    return f"#{r:02x}{g:02x}{b:02x}"


def attention_overlay(attention: np.ndarray, image: Image.Image | None = None, *, alpha: float = 0.6,
                      max_side: int = 1024, layer_side: int = ATTENTION_LAYER_SIDE,
                      fov_image: Image.Image | None = None, fov: bool = True) -> Image.Image:
    """``attention`` ``[gh, gw]`` up-sampled bicubically and coloured with ``viridis``
    (:mod:`visionfm.reports.attention`).

    Args:
        attention: the map (e.g. :meth:`visionfm.packaging.VisionFMModel.attention` of one image).
        image: with an image, the map is blended over it (RGB), the image first shrunk so that its longer
            side is at most ``max_side``; the opacity is ``alpha × attention``, and with ``fov`` a fundus
            photograph's dark border gets none. Without one, the result is an RGBA layer of
            ``layer_side`` × ``layer_side`` pixels whose opacity follows the attention
            (``min(1, 1.25 a)``), so that low attention stays see-through; pass ``fov_image`` (the
            photograph) to confine that layer to its field of view too.
        alpha: opacity of the colour at the map's peak (blend only).
        max_side: longest side of the blended image.
        layer_side: side of the RGBA layer.
    """
    import matplotlib

    from visionfm.reports.attention import ATTENTION_CMAP, attention_weights, blend_attention

    if image is not None:
        img = image.convert("RGB")
        if max(img.size) > max_side:
            s = max_side / max(img.size)
            img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.BILINEAR)
        weights, _ = attention_weights(attention, img.size, img, fov=fov)
        return blend_attention(weights, img, alpha=alpha)
    size = (layer_side, layer_side)
    ref = fov_image.convert("RGB").resize(size, Image.BILINEAR) if fov_image is not None else None
    weights, _ = attention_weights(attention, size, ref, fov=fov)
    heat = matplotlib.colormaps[ATTENTION_CMAP](weights) * 255.0
    heat[..., 3] = np.clip(weights * 1.25, 0.0, 1.0) * 255.0
    return Image.fromarray(np.clip(np.rint(heat), 0, 255).astype(np.uint8), mode="RGBA")
