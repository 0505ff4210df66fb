"""Procedural drawing primitives shared by the synthetic modalities (numpy + PIL only).

Conventions: images are float32 ``[S, S, 3]`` arrays in [0, 1] while they are being composed and are
quantised once at the end with :func:`to_uint8`. Coordinates are pixel positions ``(x, y)`` with
``y`` growing downwards, measured at the *target* size (everything is drawn at the size it is saved
at; nothing is rendered large and shrunk). Masks drawn with PIL are binary (no anti-aliasing), which
is what lets segmentation labels equal the drawn structures exactly.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "item_rng",
    "grid",
    "dist_from",
    "smooth_noise",
    "soft_disc",
    "blend",
    "new_mask",
    "mask_array",
    "blur_mask",
    "blur_image",
    "ellipse_polygon",
    "Branch",
    "grow_branch",
    "draw_branches",
    "speckle",
    "to_uint8",
    "gray_to_rgb",
    "save_png",
]


def item_rng(seed: int, task: str, split: str, index: int) -> np.random.Generator:
    """The random generator of one item, derived only from ``(seed, task, split, index)``.

    Because nothing else feeds it, an image is identical whichever worker renders it and in
    whichever order; names are hashed with CRC-32 so the mapping is stable across Python runs.
    """
    words = [int(seed) & 0xFFFFFFFF, int(seed) >> 32, zlib.crc32(task.encode()), zlib.crc32(split.encode()), int(index)]
    return np.random.default_rng(np.random.SeedSequence(words))


@lru_cache(maxsize=16)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as broadcastable ``xs [1, S]`` and ``ys [S, 1]`` (float32, read-only)."""
    c = np.arange(size, dtype=np.float32)
    xs, ys = c[None, :].copy(), c[:, None].copy()
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


def dist_from(size: int, cx: float, cy: float, sx: float = 1.0, sy: float = 1.0) -> np.ndarray:
    """Euclidean distance ``[S, S]`` of every pixel from ``(cx, cy)``; ``sx``/``sy`` stretch the axes."""
    xs, ys = grid(size)
    dx = (xs - np.float32(cx)) / np.float32(sx)
    dy = (ys - np.float32(cy)) / np.float32(sy)
    return np.sqrt(dx * dx + dy * dy)


def smooth_noise(rng: np.random.Generator, size: int, cells: int, resample: int = Image.BICUBIC) -> np.ndarray:
    """Band-limited noise ``[S, S]`` (about unit variance): a ``cells x cells`` normal field upsampled."""
    cells = max(2, int(cells))
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((size, size), resample), dtype=np.float32)


def soft_disc(dist: np.ndarray, radius: float, edge: float = 1.0) -> np.ndarray:
    """Alpha in [0, 1]: 1 inside ``radius``, falling linearly to 0 over ``edge`` pixels."""
    return np.clip((np.float32(radius) - dist) / np.float32(max(edge, 1e-3)) + 0.5, 0.0, 1.0)


def blend(img: np.ndarray, alpha: np.ndarray, colour: Sequence[float] | np.ndarray, strength: float = 1.0) -> None:
    """In place: ``img += (colour - img) * alpha * strength``; ``colour`` is RGB or a full image."""
    a = alpha if strength == 1.0 else alpha * np.float32(strength)
    col = np.asarray(colour, dtype=np.float32)
    img += (col - img) * a[..., None]


def new_mask(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    m = Image.new("L", (size, size), 0)
    return m, ImageDraw.Draw(m)


def mask_array(mask: Image.Image) -> np.ndarray:
    """Binary PIL mask -> bool ``[S, S]``."""
    return np.asarray(mask, dtype=np.uint8) > 0


def blur_mask(mask: Image.Image, radius: float) -> np.ndarray:
    """Gaussian-blurred PIL mask as float32 alpha in [0, 1] (soft-edged lesions, haze)."""
    if radius > 0.05:
        mask = mask.filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(mask, dtype=np.float32) * np.float32(1.0 / 255.0)


def blur_image(img: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of a float image in [0, 1] (through an 8-bit PIL image: fast, good enough here)."""
    if radius <= 0.05:
        return img
    pil = Image.fromarray(to_uint8(img))
    out = np.asarray(pil.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    return out * np.float32(1.0 / 255.0)


def ellipse_polygon(cx: float, cy: float, rx: float, ry: float, angle: float, n: int = 10) -> list[tuple[float, float]]:
    """Vertices of an ellipse with semi-axes ``rx`` (along ``angle``) and ``ry``, for ``ImageDraw.polygon``."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    ca, sa = np.cos(angle), np.sin(angle)
    ex, ey = rx * np.cos(t), ry * np.sin(t)
    xs = cx + ex * ca - ey * sa
    ys = cy + ex * sa + ey * ca
    return list(zip(xs.tolist(), ys.tolist()))


@dataclass
class Branch:
    """One drawn vessel segment: polyline ``points [N, 2]`` (x, y), stroke ``width`` in pixels."""

    points: np.ndarray
    width: float
    kind: int  # 0 artery, 1 vein
    depth: int
    role: str = ""  # e.g. "superotemporal" for main arcades

    def length(self) -> float:
        d = np.diff(self.points, axis=0)
        return float(np.sqrt((d * d).sum(axis=1)).sum())


def grow_branch(
    rng: np.random.Generator,
    start: tuple[float, float],
    angle: float,
    *,
    steps: int,
    step: float,
    width: float,
    kind: int,
    depth: int,
    curl: float,
    wiggle: float,
    inside,
    out: list[Branch],
    branch_prob: float = 0.12,
    taper: float = 0.68,
    tortuosity: float = 0.0,
    role: str = "",
) -> None:
    """Grow a vessel as a smooth random walk and recurse into side branches.

    The heading changes by ``curl`` per step plus Gaussian ``wiggle`` (and a sinusoidal term of
    amplitude ``tortuosity``); the walk stops at the first point for which ``inside(x, y)`` is False.
    Everything random for the walk is drawn as arrays up front, so a branch costs a few numpy calls.
    """
    if steps < 2 or width < 0.35:
        return
    noise = rng.normal(0.0, wiggle, steps).astype(np.float64)
    turn = curl + noise
    if tortuosity > 0.0:
        phase = rng.uniform(0.0, 2.0 * np.pi)
        freq = rng.uniform(0.9, 1.4)
        turn = turn + tortuosity * np.cos(freq * np.arange(steps) + phase)
    heading = angle + np.cumsum(turn)
    xs = start[0] + np.concatenate(([0.0], np.cumsum(step * np.cos(heading))))
    ys = start[1] + np.concatenate(([0.0], np.cumsum(step * np.sin(heading))))
    ok = inside(xs, ys)
    ok[0] = True
    bad = np.flatnonzero(~ok)
    n = int(bad[0]) if bad.size else steps + 1
    if n < 2:
        return
    pts = np.stack([xs[:n], ys[:n]], axis=1).astype(np.float32)
    out.append(Branch(pts, float(width), kind, depth, role))
    if depth <= 0:
        return
    u = rng.random(steps)
    sides = rng.choice((-1.0, 1.0), steps)
    spread = rng.uniform(0.45, 1.0, steps)
    for i in np.flatnonzero(u[: n - 1] < branch_prob):
        if i < 2:
            continue
        child_steps = int(max(3, (n - i) * rng.uniform(0.45, 0.85)))
        grow_branch(
            rng,
            (float(xs[i]), float(ys[i])),
            float(heading[i - 1] + sides[i] * spread[i]),
            steps=child_steps,
            step=step,
            width=width * taper,
            kind=kind,
            depth=depth - 1,
            curl=-sides[i] * abs(curl) * 0.5,
            wiggle=wiggle * 1.15,
            inside=inside,
            out=out,
            branch_prob=branch_prob * 0.9,
            taper=taper,
            tortuosity=tortuosity,
        )


def draw_branches(draw: ImageDraw.ImageDraw, branches: Sequence[Branch], fill: int = 255, scale: float = 1.0) -> None:
    """Stroke every branch (width scaled by ``scale``, at least one pixel) onto a PIL mask."""
    for b in branches:
        w = max(1, int(round(b.width * scale)))
        draw.line(b.points.ravel().tolist(), fill=fill, width=w, joint="curve" if w > 2 else None)


def speckle(rng: np.random.Generator, shape: tuple[int, ...], looks: float = 3.0) -> np.ndarray:
    """Multiplicative speckle with mean 1 (Gamma with shape ``looks``), as in ultrasound / OCT."""
    return rng.gamma(looks, 1.0 / looks, shape).astype(np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def save_png(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 ``[S, S]`` ('L') or ``[S, S, 3]`` ('RGB') array as PNG (deterministic bytes)."""
    Image.fromarray(array).save(path, format="PNG", compress_level=1)
