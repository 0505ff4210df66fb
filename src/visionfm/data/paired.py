"""Joint image/label transforms for the dense tasks and Gaussian heatmap rendering.

Both tasks use ``torchvision.transforms.v2`` so the label moves with the image: a
``tv_tensors.Mask`` is resized with nearest interpolation, ``tv_tensors.KeyPoints`` are mapped
through every geometric op (resize, flip, affine, crop).

Pipelines (reference §5.4, §5.5):

* segmentation, train: ``Resize((S, S))`` → H-flip (p 0.5) → V-flip (p 0.5) → float → Normalize;
* landmarks, train: ``Resize((S, S))`` → ``RandomAffine(degrees=5, translate=(0.05, 0.05))`` applied
  with probability 0.5 → H-flip (p 0.5) → float → Normalize;
* evaluation (both): ``Resize((S, S))`` → float → Normalize.

Coordinate convention: the readers give landmark points as **pixel indices** (column, row), the
centre of the top-left pixel being (0, 0). torchvision's resize / affine / crop of keypoints use
continuous coordinates in which that centre is (0.5, 0.5), but its keypoint flips map x to
``W - 1 - x`` (pixel indices). :class:`LandmarkTransform` therefore runs resize, affine and crops
on points shifted by +0.5, shifts back, then flips (a flipped index ``c`` becomes ``W - 1 - c``
exactly; checked against the pixels in the tests). Points moved outside the image by an affine
jitter become NaN (missing).

Deliberate differences from the original: heatmaps are never cast to int64 (item 15; soft targets
are rendered at training resolution by :func:`render_heatmaps` from points, so a single-pixel
target cannot vanish under nearest downsampling), and a Mask keeps its class ids.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = ["SegTransform", "LandmarkTransform", "render_heatmaps", "decode_heatmaps", "to_uint8_image"]


def _tail(mean: Sequence[float], std: Sequence[float]) -> list[Any]:
    return [
        v2.ToImage(),
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(list(mean), list(std)),
    ]


class SegTransform:
    """``(PIL image, Mask [H, W]) → (float [3, S, S] normalised, int64 [S, S])``.

    Args:
        size: input side ``S`` (images are resized to ``S × S``, as the original).
        mean / std: normalisation statistics (``visionfm.data.modalities.get_stats``).
        train: add the random flips.
        hflip / vflip: enable each flip in training (both on, as the original).
        extra: further v2 geometric ops run after the resize (e.g. ``v2.RandomCrop``,
            ``v2.RandomRotation``); they must keep the output at ``S × S``.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], train: bool,
                 hflip: bool = True, vflip: bool = True, extra: Sequence[Any] = ()) -> None:
        ops: list[Any] = [v2.Resize((size, size), antialias=True), *extra]
        if train and hflip:
            ops.append(v2.RandomHorizontalFlip(0.5))
        if train and vflip:
            ops.append(v2.RandomVerticalFlip(0.5))
        self.size = size
        self.pipeline = v2.Compose(ops + _tail(mean, std))

    def __call__(self, image: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        img, m = self.pipeline(image, mask)
        return img.as_subclass(torch.Tensor), m.as_subclass(torch.Tensor).long()


class LandmarkTransform:
    """``(PIL image, KeyPoints [K, 2]) → (float [3, S, S] normalised, float [K, 2] (x, y) pixel indices)``.

    Args:
        size: input side ``S``.
        mean / std: normalisation statistics.
        train: add the random affine (probability ``affine_p``) and the H-flip.
        affine_p / degrees / translate: the original's ``RandomAffine(5, (0.05, 0.05))`` at p 0.5.
        hflip: H-flip in training (on, as the original; landmark identities are not swapped).
        extra: further v2 geometric ops run after the resize (as :class:`SegTransform`; no flips).
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], train: bool,
                 affine_p: float = 0.5, degrees: float = 5.0, translate: float = 0.05, hflip: bool = True,
                 extra: Sequence[Any] = ()) -> None:
        geometric: list[Any] = [v2.Resize((size, size), antialias=True), *extra]
        if train and affine_p > 0:
            geometric.append(v2.RandomApply([v2.RandomAffine(degrees=degrees, translate=(translate, translate))],
                                            p=affine_p))
        self.size = size
        self.geometric = v2.Compose(geometric)
        self.flip = v2.RandomHorizontalFlip(0.5) if train and hflip else None
        self.tail = v2.Compose(_tail(mean, std))

    def __call__(self, image: Any, points: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(points, tv_tensors.KeyPoints):
            raise TypeError(f"points must be tv_tensors.KeyPoints (with canvas_size), got {type(points).__name__}")
        # Resize / affine / crop use continuous coordinates (pixel centre at +0.5) ...
        shifted = tv_tensors.wrap(points.as_subclass(torch.Tensor).float() + 0.5, like=points)
        img, kp = self.geometric(image, shifted)
        h, w = kp.canvas_size
        out = kp.as_subclass(torch.Tensor).clone()
        outside = (out[:, 0] < 0) | (out[:, 0] > w) | (out[:, 1] < 0) | (out[:, 1] > h)
        out = out - 0.5
        out[outside] = float("nan")
        # ... while torchvision's keypoint flip maps x to W - 1 - x, i.e. works on pixel indices.
        kp = tv_tensors.wrap(out, like=kp)
        if self.flip is not None:
            img, kp = self.flip(img, kp)
        img, kp = self.tail(img, kp)
        return img.as_subclass(torch.Tensor), kp.as_subclass(torch.Tensor).float()


def render_heatmaps(points: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """Gaussian target distributions ``[B, K, H, W]`` from points ``[B, K, 2]`` (x, y pixel indices).

    Each channel is ``exp(-d²/2σ²)`` normalised to sum 1 over the image, the target of the spatial
    soft-max cross-entropy. A NaN point gives an all-zero channel (excluded from the loss).
    """
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"points must have shape [B, K, 2], got {tuple(points.shape)}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    pts = points.float()
    valid = torch.isfinite(pts).all(-1)  # [B, K]
    pts = torch.where(valid[..., None], pts, torch.zeros_like(pts))
    xs = torch.arange(width, dtype=torch.float32, device=pts.device)
    ys = torch.arange(height, dtype=torch.float32, device=pts.device)
    gx = torch.exp(-((xs[None, None, :] - pts[..., 0:1]) ** 2) / (2 * sigma**2))  # [B, K, W]
    gy = torch.exp(-((ys[None, None, :] - pts[..., 1:2]) ** 2) / (2 * sigma**2))  # [B, K, H]
    maps = gy[..., :, None] * gx[..., None, :]
    total = maps.sum((-2, -1), keepdim=True).clamp_min(1e-12)
    return maps / total * valid[..., None, None].float()


def decode_heatmaps(logits: torch.Tensor, refine: bool = True) -> torch.Tensor:
    """Points ``[B, K, 2]`` (x, y) from heatmap logits ``[B, K, H, W]``.

    The arg-max pixel (the original's decoding), refined by the probability-weighted centroid of its
    3×3 neighbourhood when ``refine`` (sub-pixel; the arg-max alone quantises to whole pixels).
    """
    b, k, h, w = logits.shape
    flat = logits.float().reshape(b, k, h * w)
    idx = flat.argmax(-1)
    row = torch.div(idx, w, rounding_mode="floor").float()
    col = (idx % w).float()
    if not refine:
        return torch.stack([col, row], -1)
    prob = torch.softmax(flat, -1).reshape(b, k, h, w)
    padded = torch.nn.functional.pad(prob, (1, 1, 1, 1))
    r0, c0 = row.long(), col.long()
    acc = torch.zeros(b, k, 3, device=logits.device)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            rr, cc = r0 + dy + 1, c0 + dx + 1
            p = padded.reshape(b, k, -1).gather(-1, (rr * (w + 2) + cc)[..., None])[..., 0]
            acc[..., 0] += p * dx
            acc[..., 1] += p * dy
            acc[..., 2] += p
    denom = acc[..., 2].clamp_min(1e-12)
    return torch.stack([col + acc[..., 0] / denom, row + acc[..., 1] / denom], -1)


def to_uint8_image(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo Normalize: ``[3, H, W]`` float → ``[H, W, 3]`` uint8 (for overlays)."""
    m = torch.tensor(list(mean), dtype=torch.float32)[:, None, None]
    s = torch.tensor(list(std), dtype=torch.float32)[:, None, None]
    x = (image.detach().float().cpu() * s + m).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).permute(1, 2, 0)
