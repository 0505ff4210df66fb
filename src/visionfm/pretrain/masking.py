"""iBOT masks for masked-image modelling (reference §4.3).

Three small pieces:

* :class:`MaskRatioSampler` decides, per crop, which fraction of patches to mask;
* :class:`BlockMaskGenerator` (BEiT-style blocks) and :class:`RandomMaskGenerator` turn a patch count
  into a boolean ``[H, W]`` grid;
* :class:`PretrainMasker` combines them: one mask per crop of a sample, for the dataset transform.

Difference from the original: all randomness comes from an explicit ``numpy.random.Generator`` passed
by the caller instead of the process-global ``random``/``np.random`` state, so masks are reproducible
and DataLoader workers never share a stream. The distributions are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

__all__ = [
    "MaskRatioSampler",
    "BlockMaskGenerator",
    "RandomMaskGenerator",
    "PretrainMasker",
    "PRED_SHAPES",
]

PRED_SHAPES = ("block", "rand")

RatioArg = float | Sequence[float]


def _uniform(rng: np.random.Generator, a: float, b: float) -> float:
    """``a + (b - a) * U[0,1)``, like ``random.uniform``: valid (not "undefined") when ``b < a``."""
    return a + (b - a) * float(rng.random())


def _as_list(x: RatioArg, what: str) -> list[float]:
    if isinstance(x, (int, float, np.floating, np.integer)):
        return [float(x)]
    values = [float(v) for v in x]
    if not values:
        raise ValueError(f"{what} must not be empty")
    return values


class MaskRatioSampler:
    """Per-crop mask ratio (``PretrainMask.get_pred_ratio``, reference §4.3).

    Args:
        pred_ratio: mean ratio ``m`` or a list of them.
        pred_ratio_var: half-width ``v`` of the uniform range around each ratio; a scalar (or a
            one-element list) is broadcast over a list of ratios.
        pred_start_epoch: before this epoch every ratio is 0.

    For each (m, v) pair a ratio ``U(m - v, m + v)`` (or ``m`` when v = 0) is drawn; with several
    pairs one of the drawn values is then chosen uniformly. The README setting
    ``pred_ratio=[0, 0.3], pred_ratio_var=[0, 0.2]`` therefore gives no mask for half of the crops and
    ``U(0.1, 0.5)`` for the other half.

    Raises:
        ValueError: when ``m < v`` (an ``assert`` in the original) or, a check the original lacks,
            when ``m + v > 1`` (more patches than the grid holds) or the list lengths differ.
    """

    def __init__(self, pred_ratio: RatioArg, pred_ratio_var: RatioArg = 0.0, pred_start_epoch: int = 0) -> None:
        ratios = _as_list(pred_ratio, "pred_ratio")
        variances = _as_list(pred_ratio_var, "pred_ratio_var")
        if len(variances) == 1 and len(ratios) > 1:
            variances = variances * len(ratios)
        if len(variances) != len(ratios):
            raise ValueError(
                f"pred_ratio {ratios} and pred_ratio_var {variances} must have the same length "
                "(or pred_ratio_var a single value)"
            )
        for m, v in zip(ratios, variances):
            if v < 0 or m < v:
                raise ValueError(f"each pred_ratio must be >= its pred_ratio_var >= 0; got ratio {m}, var {v}")
            if m + v > 1:
                raise ValueError(f"pred_ratio + pred_ratio_var must be <= 1; got ratio {m}, var {v}")
        if pred_start_epoch < 0:
            raise ValueError(f"pred_start_epoch must be >= 0, got {pred_start_epoch}")
        self.ratios = ratios
        self.variances = variances
        self.pred_start_epoch = int(pred_start_epoch)

    @property
    def max_ratio(self) -> float:
        """The largest ratio any crop can draw (``max(m + v)``)."""
        return max(m + v for m, v in zip(self.ratios, self.variances))

    def __call__(self, epoch: int, rng: np.random.Generator) -> float:
        """Draw one ratio in [0, 1] for a crop at ``epoch``."""
        if epoch < self.pred_start_epoch:
            return 0.0
        # Every pair is drawn before choosing, as in the original (same distribution either way).
        drawn = [_uniform(rng, m - v, m + v) if v > 0 else m for m, v in zip(self.ratios, self.variances)]
        if len(drawn) == 1:
            return drawn[0]
        return drawn[int(rng.integers(len(drawn)))]

    def __repr__(self) -> str:
        return (
            f"MaskRatioSampler(pred_ratio={self.ratios}, pred_ratio_var={self.variances}, "
            f"pred_start_epoch={self.pred_start_epoch})"
        )


class BlockMaskGenerator:
    """BEiT-style block masking on an ``h x w`` patch grid (reference §4.3, ``pred_shape='block'``).

    Args:
        h: grid height in patches.
        w: grid width in patches.
        min_num_patches: smallest block area drawn; ``None`` gives ``(min(h, w) // 3) ** 2``
            (16 for a 14x14 grid, 4 for 6x6) as in the original.
        min_aspect: blocks have aspect ratio in ``[min_aspect, 1 / min_aspect]`` (log-uniform).
    """

    def __init__(self, h: int, w: int, min_num_patches: int | None = None, min_aspect: float = 0.3) -> None:
        if h < 1 or w < 1:
            raise ValueError(f"mask grid must be at least 1x1, got {h}x{w}")
        if not 0 < min_aspect <= 1:
            raise ValueError(f"min_aspect must be in (0, 1], got {min_aspect}")
        self.h = int(h)
        self.w = int(w)
        self.min_num_patches = (min(h, w) // 3) ** 2 if min_num_patches is None else int(min_num_patches)
        self.log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))

    def _place_block(self, mask: np.ndarray, max_new: float, rng: np.random.Generator) -> int:
        """Try up to 10 blocks; mask the first one that adds between 1 and ``max_new`` patches."""
        for _ in range(10):
            area = _uniform(rng, self.min_num_patches, max_new)
            aspect = math.exp(_uniform(rng, *self.log_aspect))
            bh = int(round(math.sqrt(area * aspect)))
            bw = int(round(math.sqrt(area / aspect)))
            if bh < self.h and bw < self.w:
                top = int(rng.integers(0, self.h - bh, endpoint=True))
                left = int(rng.integers(0, self.w - bw, endpoint=True))
                box = mask[top : top + bh, left : left + bw]
                new = bh * bw - int(box.sum())
                if 0 < new <= max_new:
                    box[...] = True
                    return new
        return 0

    def __call__(self, num_masking_patches: float, rng: np.random.Generator) -> np.ndarray:
        """Return a ``np.bool_ [h, w]`` mask with at most ``num_masking_patches`` True entries.

        Blocks are added while fewer than ``num_masking_patches`` patches are masked; the loop stops
        early when 10 attempts in a row fail to add a block, so the count is usually a little below
        the target and never above it.
        """
        mask = np.zeros((self.h, self.w), dtype=np.bool_)
        count = 0
        while count < num_masking_patches:
            delta = self._place_block(mask, num_masking_patches - count, rng)
            if delta == 0:
                break
            count += delta
        return mask

    def __repr__(self) -> str:
        return f"BlockMaskGenerator(h={self.h}, w={self.w}, min_num_patches={self.min_num_patches})"


class RandomMaskGenerator:
    """Mask exactly ``int(num_masking_patches)`` patches chosen uniformly (``pred_shape='rand'``)."""

    def __init__(self, h: int, w: int) -> None:
        if h < 1 or w < 1:
            raise ValueError(f"mask grid must be at least 1x1, got {h}x{w}")
        self.h = int(h)
        self.w = int(w)

    def __call__(self, num_masking_patches: float, rng: np.random.Generator) -> np.ndarray:
        n = self.h * self.w
        k = int(num_masking_patches)
        if not 0 <= k <= n:
            raise ValueError(f"cannot mask {k} of {n} patches")
        flat = np.zeros(n, dtype=np.bool_)
        flat[rng.permutation(n)[:k]] = True
        return flat.reshape(self.h, self.w)


CropSize = int | tuple[int, int]


class PretrainMasker:
    """One mask per crop of a pretraining sample (the masking half of the original ``PretrainMask``).

    The dataset transform calls :meth:`make_masks` once per sample with the crop sizes (global and
    local, in order). Local crops get masks too, as in the original, although the loss only uses the
    global ones; the ratio is drawn independently per crop.

    Args:
        pred_ratio, pred_ratio_var, pred_start_epoch: see :class:`MaskRatioSampler`.
        pred_shape: ``"block"`` (BEiT blocks) or ``"rand"`` (uniform patches).
        patch_size: ViT patch size; the grid is ``(crop_h // patch_size, crop_w // patch_size)``.
        min_aspect: block aspect-ratio bound, see :class:`BlockMaskGenerator`.
    """

    def __init__(
        self,
        pred_ratio: RatioArg = 0.3,
        pred_ratio_var: RatioArg = 0.0,
        pred_start_epoch: int = 0,
        pred_shape: Literal["block", "rand"] = "block",
        patch_size: int = 16,
        min_aspect: float = 0.3,
    ) -> None:
        if pred_shape not in PRED_SHAPES:
            raise ValueError(f"unknown pred_shape {pred_shape!r}; valid: {', '.join(PRED_SHAPES)}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.sampler = MaskRatioSampler(pred_ratio, pred_ratio_var, pred_start_epoch)
        self.pred_shape = pred_shape
        self.patch_size = int(patch_size)
        self.min_aspect = float(min_aspect)
        self._generators: dict[tuple[int, int], BlockMaskGenerator | RandomMaskGenerator] = {}

    def grid(self, crop_size: CropSize) -> tuple[int, int]:
        """Patch grid ``(H, W)`` of a crop of side ``crop_size`` (int) or ``(height, width)``."""
        ch, cw = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
        h, w = ch // self.patch_size, cw // self.patch_size
        if h < 1 or w < 1:
            raise ValueError(f"crop {ch}x{cw} is smaller than one {self.patch_size}px patch")
        return h, w

    def max_masked(self, crop_size: CropSize) -> int:
        """An upper bound on the masked patches of one crop of this size.

        Both generators mask at most ``ratio · H · W`` patches (blocks are only added while they fit
        in the remaining budget; ``rand`` masks ``int`` of it), so ``floor(max_ratio · H · W)`` bounds
        every mask. The trainer uses it to gather a fixed number of tokens per image.
        """
        h, w = self.grid(crop_size)
        return min(h * w, int(math.floor(self.sampler.max_ratio * h * w + 1e-9)))

    def _generator(self, hw: tuple[int, int]) -> BlockMaskGenerator | RandomMaskGenerator:
        gen = self._generators.get(hw)
        if gen is None:
            if self.pred_shape == "block":
                gen = BlockMaskGenerator(*hw, min_aspect=self.min_aspect)
            else:
                gen = RandomMaskGenerator(*hw)
            self._generators[hw] = gen
        return gen

    def make_masks(self, crop_sizes: Sequence[CropSize], epoch: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Return one ``np.bool_ [H, W]`` mask per crop size, in the same order."""
        masks = []
        for size in crop_sizes:
            h, w = self.grid(size)
            ratio = self.sampler(epoch, rng)
            masks.append(self._generator((h, w))(ratio * h * w, rng))
        return masks

    __call__ = make_masks

    def __repr__(self) -> str:
        return f"PretrainMasker({self.sampler!r}, pred_shape={self.pred_shape!r}, patch_size={self.patch_size})"
