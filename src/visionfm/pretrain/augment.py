"""Multi-crop augmentation for iBOT pretraining with per-image modality statistics (reference §4.2).

``IBOTAugmentation(img, modality)`` returns the global crops, then the local crops, each normalised
with the statistics of *that image's* modality, plus one mask per crop. Normalising per image is what
lets one run mix modalities: each image is normalised with its own mean/std.

Recipe (as ``DataAugmentationiBOT``):

* FJ = horizontal flip (p .5) → ColorJitter(.4, .4, .2, .1) (p .8) → grayscale (p .2);
* global crop 1: RandomResizedCrop(input_size, global scale, ratio (0.8, 1.2), bicubic) → FJ → blur (p 1.0);
* global crops 2..G: the same crop → FJ → blur (p .1) → solarize (threshold 128, p .2);
* local crops: RandomResizedCrop(local size, local scale, default ratio, bicubic) → FJ → blur (p .5);
* then ToTensor and Normalize(modality mean/std) (ToTensor only when ``normalize=False``, the
  original's ``--scheme mix``).

Blur is PIL's ``GaussianBlur`` with radius U(0.1, 2.0), applied when ``u <= p``; solarize is applied
when ``u < p``. Randomness comes from torch's generator (seeded per DataLoader worker) instead of
Python's ``random`` (difference from the original, same distributions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import Tensor
from torchvision.transforms import InterpolationMode, v2

from visionfm.data.modalities import canonical_modality, get_stats

from .masking import PretrainMasker
from .views import RECIPE

__all__ = ["IBOTAugmentation", "PILGaussianBlur", "MaskFn"]

MaskFn = Callable[[Sequence[int], int, np.random.Generator], list[np.ndarray]]


def _uniform01() -> float:
    return float(torch.rand(()).item())


class PILGaussianBlur:
    """PIL Gaussian blur with radius ~ U(radius_min, radius_max), applied when ``u <= p``."""

    def __init__(self, p: float, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.p = p
        self.radius_min = radius_min
        self.radius_max = radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if _uniform01() > self.p:  # the original applies when random() <= p
            return img
        radius = self.radius_min + (self.radius_max - self.radius_min) * _uniform01()
        return img.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return f"PILGaussianBlur(p={self.p}, radius=({self.radius_min}, {self.radius_max}))"


class IBOTAugmentation:
    """iBOT multi-crop views and masks for one PIL image.

    Args:
        input_size: global crop side.
        global_crops_scale: RandomResizedCrop area range of global crops.
        local_crops_scale: the same for local crops.
        global_crops_number: G (>= 1).
        local_crops_number: L (>= 0).
        local_crops_size: local crop side (96 in the original, hard-coded there).
        normalize: normalise with the image's modality statistics (False = the original's ``mix``).
        patch_size: ViT patch size, for the default masker.
        mask_fn: ``(crop_sizes, epoch, rng) -> list[np.bool_ [H, W]]``, e.g.
            ``PretrainMasker(...).make_masks``; ``None`` uses ``PretrainMasker(patch_size=patch_size)``
            (the original defaults: block masks, ratio 0.3).
        photometric: False drops colour jitter, grayscale, blur and solarize (crops and flips stay);
            an addition for tests and debugging, True reproduces the original.
    """

    def __init__(
        self,
        input_size: int = 224,
        global_crops_scale: tuple[float, float] = (0.32, 1.0),
        local_crops_scale: tuple[float, float] = (0.05, 0.4),
        global_crops_number: int = 2,
        local_crops_number: int = 0,
        local_crops_size: int = 96,
        normalize: bool = True,
        patch_size: int = 16,
        mask_fn: MaskFn | None = None,
        photometric: bool = True,
    ) -> None:
        if global_crops_number < 1 or local_crops_number < 0:
            raise ValueError(
                f"need global_crops_number >= 1 and local_crops_number >= 0, "
                f"got {global_crops_number}, {local_crops_number}"
            )
        self.input_size = input_size
        self.local_crops_size = local_crops_size
        self.global_crops_number = global_crops_number
        self.local_crops_number = local_crops_number
        self.normalize = normalize
        self.mask_fn: MaskFn = mask_fn if mask_fn is not None else PretrainMasker(patch_size=patch_size).make_masks
        self.epoch = 0
        bicubic = InterpolationMode.BICUBIC

        def jitter() -> list[Callable]:
            r = RECIPE
            flip: list[Callable] = [v2.RandomHorizontalFlip(p=r.flip_p)]
            if not photometric:
                return flip
            jitter = v2.ColorJitter(brightness=r.brightness, contrast=r.contrast, saturation=r.saturation, hue=r.hue)
            return flip + [v2.RandomApply([jitter], p=r.jitter_p), v2.RandomGrayscale(p=r.grayscale_p)]

        def blur(p: float) -> list[Callable]:
            return [PILGaussianBlur(p, *RECIPE.blur_radius)] if photometric else []

        global_crop = v2.RandomResizedCrop(
            input_size, scale=global_crops_scale, ratio=RECIPE.global_ratio, interpolation=bicubic
        )
        self.global1 = v2.Compose([global_crop, *jitter(), *blur(RECIPE.blur_p_global1)])
        solarize = (
            [v2.RandomSolarize(threshold=RECIPE.solarize_threshold, p=RECIPE.solarize_p_global)] if photometric else []
        )
        self.global2 = v2.Compose([global_crop, *jitter(), *blur(RECIPE.blur_p_global), *solarize])
        self.local = v2.Compose(
            [
                v2.RandomResizedCrop(
                    local_crops_size, scale=local_crops_scale, ratio=RECIPE.local_ratio, interpolation=bicubic
                ),
                *jitter(),
                *blur(RECIPE.blur_p_local),
            ]
        )
        self.to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
        self._normalizers: dict[str, v2.Normalize] = {}

    @property
    def crop_sizes(self) -> list[int]:
        """Side of every crop, in output order (globals then locals)."""
        return [self.input_size] * self.global_crops_number + [self.local_crops_size] * self.local_crops_number

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch seen by the mask ratio sampler (``pred_start_epoch``).

        Only reaches DataLoader workers that are (re)created after the call, i.e. with
        ``persistent_workers=False`` as in the original.
        """
        self.epoch = int(epoch)

    def _normalizer(self, modality: str) -> v2.Normalize:
        name = canonical_modality(modality)
        norm = self._normalizers.get(name)
        if norm is None:
            mean, std = get_stats(name)
            norm = self._normalizers[name] = v2.Normalize(mean=list(mean), std=list(std))
        return norm

    def _finish(self, img: Image.Image, norm: v2.Normalize | None) -> Tensor:
        x = self.to_tensor(img)
        if norm is not None:
            x = norm(x)
        return x.as_subclass(Tensor)

    def __call__(
        self, img: Image.Image, modality: str | None = None, rng: np.random.Generator | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Return ``(crops, masks)``.

        Args:
            img: PIL image (converted to RGB if needed).
            modality: any accepted spelling; required when ``normalize``.
            rng: generator for the masks; by default a fresh one seeded from torch's generator, so
                masks follow the DataLoader's per-worker seeding and a global ``torch.manual_seed``.

        Returns:
            crops: G tensors ``[3, input_size, input_size]`` then L tensors ``[3, s, s]`` (float32);
            masks: one ``bool [S/patch, S/patch]`` tensor per crop, same order.
        """
        norm = None
        if self.normalize:
            if modality is None:
                raise ValueError("a modality is required to normalise (or build with normalize=False)")
            norm = self._normalizer(modality)
        if img.mode != "RGB":
            img = img.convert("RGB")
        views = [self.global1(img)]
        views += [self.global2(img) for _ in range(self.global_crops_number - 1)]
        views += [self.local(img) for _ in range(self.local_crops_number)]
        crops = [self._finish(v, norm) for v in views]
        if rng is None:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        masks = [torch.from_numpy(m) for m in self.mask_fn(self.crop_sizes, self.epoch, rng)]
        return crops, masks
