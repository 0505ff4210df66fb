"""The multi-crop recipe split in two: geometry in the DataLoader workers, photometry on the device.

The original augments every crop with PIL inside the workers (reference §4.2). That design spends
most of a worker's time on colour jitter, blur and solarisation of 224-px crops, and on decoding
pixels no crop uses. Here:

* :class:`GeometricViews` (in the workers) draws, per crop, the RandomResizedCrop box and the flip,
  resamples the crop (bicubic, antialiased) to its output size and returns **uint8** crops, the
  block masks, and a small vector of *photometric parameters* drawn from the same per-sample seed;
* :class:`BatchPhotometric` (on the training device, CUDA or CPU tensors) applies those parameters
  to the whole batch at once: colour jitter in each sample's own random order, grayscale, Gaussian
  blur (one grouped convolution, each sample its own sigma), solarisation, then normalisation with
  each image's modality statistics.

Drawing the photometric parameters in the worker keeps every random decision a function of
``(seed, epoch, index)``, exactly as in the PIL path, so ``--resume auto`` stays exact and the
result does not depend on the device's random generator.

:data:`RECIPE` holds the recipe's constants once; :class:`visionfm.pretrain.augment.IBOTAugmentation`
(the PIL path) and this module both read them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from visionfm.data.images import EncodedJPEG
from visionfm.data.modalities import MODALITY_NAMES, canonical_modality, get_stats

__all__ = [
    "RECIPE",
    "ViewSpec",
    "view_specs",
    "min_decode_pixels",
    "GeometricViews",
    "ViewSample",
    "ViewBatch",
    "collate_views",
    "decode_deferred",
    "BatchPhotometric",
    "PARAM",
    "N_PARAMS",
]


@dataclass(frozen=True)
class Recipe:
    """The original's photometric constants (``DataAugmentationiBOT``, reference §4.2)."""

    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_radius: tuple[float, float] = (0.1, 2.0)
    solarize_threshold: int = 128
    global_ratio: tuple[float, float] = (0.8, 1.2)
    local_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    blur_p_global1: float = 1.0
    blur_p_global: float = 0.1
    blur_p_local: float = 0.5
    solarize_p_global: float = 0.2


RECIPE = Recipe()


@dataclass(frozen=True)
class ViewSpec:
    """One crop of the recipe: output side, RandomResizedCrop ranges, blur and solarize chances."""

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    blur_p: float
    solarize_p: float


def view_specs(
    input_size: int = 224,
    global_crops_scale: Sequence[float] = (0.32, 1.0),
    local_crops_scale: Sequence[float] = (0.05, 0.4),
    global_crops_number: int = 2,
    local_crops_number: int = 0,
    local_crops_size: int = 96,
) -> list[ViewSpec]:
    """The crops of one sample in output order: global 1, globals 2..G, then the locals."""
    r = RECIPE
    gs = (float(global_crops_scale[0]), float(global_crops_scale[1]))
    ls = (float(local_crops_scale[0]), float(local_crops_scale[1]))
    specs = [ViewSpec(input_size, gs, r.global_ratio, r.blur_p_global1, 0.0)]
    specs += [ViewSpec(input_size, gs, r.global_ratio, r.blur_p_global, r.solarize_p_global)] * (
        global_crops_number - 1
    )
    specs += [ViewSpec(local_crops_size, ls, r.local_ratio, r.blur_p_local, 0.0)] * local_crops_number
    return specs


def min_decode_pixels(specs: Sequence[ViewSpec]) -> int:
    """Fewest source pixels for which every crop the recipe can draw still spans its output size.

    A RandomResizedCrop of area fraction ``s ≥ s_min`` and aspect ``r ∈ [r_lo, r_hi]`` has a shorter
    side of at least ``sqrt(s_min · min(r_lo, 1/r_hi) · A)`` for a source of ``A`` pixels (its
    fallback centre crop is larger). Requiring that side to be ≥ ``size + 1`` (one pixel for the
    rounding of the crop size) gives ``A ≥ (size + 1)² / (s_min · min(r_lo, 1/r_hi))``; decoding a
    JPEG at any DCT scale that keeps this many pixels never up-samples a crop.
    """
    need = 0.0
    for s in specs:
        squeeze = min(s.ratio[0], 1.0 / s.ratio[1])
        need = max(need, (s.size + 1) ** 2 / (s.scale[0] * squeeze))
    return int(math.ceil(need))


# Layout of the per-crop photometric parameter vector (float32).
PARAM = {
    "jitter": 0,  # 1.0 when colour jitter is applied (p .8)
    "brightness": 1,  # factors; 1.0 (0.0 for hue) is the identity
    "contrast": 2,
    "saturation": 3,
    "hue": 4,
    "order": 5,  # 5..8: torchvision's fn_idx, the jitter operations' order (0 b, 1 c, 2 s, 3 h)
    "grayscale": 9,
    "sigma": 10,  # Gaussian blur radius (PIL's standard deviation); 0.0 means no blur
    "solarize": 11,
}
N_PARAMS = 12


def draw_photometric(spec: ViewSpec) -> Tensor:
    """One crop's photometric parameters, drawn from torch's generator (seeded per sample).

    One ``torch.rand(8)`` call supplies every decision and factor (few generator calls keep the
    worker cheap); the distributions are the recipe's.
    """
    r = RECIPE
    u = torch.rand(8).tolist()
    p = _identity_params()
    if u[0] < r.jitter_p:  # RandomApply: applied when rand < p
        p[PARAM["jitter"]] = 1.0
        p[PARAM["order"] : PARAM["order"] + 4] = torch.randperm(4).float()
        p[PARAM["brightness"]] = 1 - r.brightness + 2 * r.brightness * u[1]
        p[PARAM["contrast"]] = 1 - r.contrast + 2 * r.contrast * u[2]
        p[PARAM["saturation"]] = 1 - r.saturation + 2 * r.saturation * u[3]
        p[PARAM["hue"]] = -r.hue + 2 * r.hue * u[4]
    if u[5] < r.grayscale_p:
        p[PARAM["grayscale"]] = 1.0
    if u[6] <= spec.blur_p:  # the original blurs when random() <= p
        lo, hi = r.blur_radius
        p[PARAM["sigma"]] = lo + (hi - lo) * torch.rand(()).item()
    if u[7] < spec.solarize_p:
        p[PARAM["solarize"]] = 1.0
    return p


MaskFn = Callable[[Sequence[int], int, np.random.Generator], list[np.ndarray]]


class ViewSample(NamedTuple):
    """What a worker returns for one image (the device path)."""

    crops: list[Tensor]  # uint8 [3, S, S] per crop; zero placeholders when the JPEG is left to the GPU
    masks: list[Tensor]  # bool [S/p, S/p] per crop
    params: Tensor  # float32 [C, N_PARAMS]
    modality: int  # index into MODALITY_NAMES
    jpeg: Tensor | None = None  # uint8 [n_bytes]: the undecoded file (--decode gpu)
    geometry: Tensor | None = None  # int64 [C, 5]: top, left, height, width, flip (with jpeg)


class ViewBatch(NamedTuple):
    """A collated device-path batch (still on the CPU, uint8)."""

    crops: list[Tensor]  # uint8 [B, 3, S, S] per crop (zeros where a JPEG is left to the GPU)
    masks: list[Tensor]  # bool [B, h, w] per crop
    params: list[Tensor]  # float32 [B, N_PARAMS] per crop
    modality: Tensor  # int64 [B]
    jpeg: list[Tensor | None] | None = None  # per sample: undecoded bytes or None
    geometry: Tensor | None = None  # int64 [B, C, 5]

    def pin_memory(self) -> ViewBatch:  # DataLoader(pin_memory=True) calls this
        return self._replace(crops=[c.pin_memory() for c in self.crops], masks=[m.pin_memory() for m in self.masks],
                             params=[p.pin_memory() for p in self.params], modality=self.modality.pin_memory())


class GeometricViews:
    """Worker half of the recipe: RandomResizedCrop (bicubic) + horizontal flip → uint8 crops.

    Args:
        specs: from :func:`view_specs`.
        mask_fn: ``(crop_sizes, epoch, rng) -> masks``, e.g. ``PretrainMasker(...).make_masks``.
        photometric: False leaves every photometric parameter at the identity (tests, debugging).

    Randomness: torch's generator for crops, flips and photometric parameters, ``rng`` for masks,
    both seeded per sample by :class:`visionfm.pretrain.data.PretrainCropDataset`.
    """

    def __init__(self, specs: Sequence[ViewSpec], mask_fn: MaskFn, photometric: bool = True) -> None:
        self.specs = list(specs)
        self.mask_fn = mask_fn
        self.photometric = photometric
        self.epoch = 0

    @property
    def crop_sizes(self) -> list[int]:
        return [s.size for s in self.specs]

    def __call__(self, img: Image.Image | EncodedJPEG, modality: str | None, rng: np.random.Generator) -> ViewSample:
        deferred = isinstance(img, EncodedJPEG)
        if deferred:
            w, h = img.size
            # get_params reads only the dimensions: a zero-stride view allocates nothing
            pixels = torch.zeros((1, 1, 1), dtype=torch.uint8).expand(3, h, w)
        else:
            if img.mode != "RGB":
                img = img.convert("RGB")
            # torch's antialiased bicubic kernel on uint8 tensors follows PIL's resampling and is
            # several times faster than PIL's resize on one core.
            pixels = TF.pil_to_tensor(img)
        crops, params, geometry = [], [], []
        for spec in self.specs:
            top, left, h, w = RandomResizedCrop.get_params(pixels, list(spec.scale), list(spec.ratio))
            flip = float(torch.rand(())) < RECIPE.flip_p
            if deferred:
                geometry.append((top, left, h, w, int(flip)))
                crops.append(torch.zeros((1, 1, 1), dtype=torch.uint8).expand(3, spec.size, spec.size))
            else:
                crops.append(_crop(pixels, top, left, h, w, spec.size, flip))
            params.append(draw_photometric(spec) if self.photometric else _identity_params())
        masks = [torch.from_numpy(m) for m in self.mask_fn(self.crop_sizes, self.epoch, rng)]
        index = MODALITY_NAMES.index(canonical_modality(modality)) if modality is not None else 0
        sample = ViewSample(crops, masks, torch.stack(params), index)
        if deferred:
            jpeg = torch.frombuffer(bytearray(img.data), dtype=torch.uint8)
            sample = sample._replace(jpeg=jpeg, geometry=torch.tensor(geometry, dtype=torch.int64))
        return sample


def _crop(pixels: Tensor, top: int, left: int, h: int, w: int, size: int, flip: bool) -> Tensor:
    """RandomResizedCrop's resampling (bicubic, antialiased) and the flip, on a ``[3, H, W]`` uint8 tensor."""
    crop = TF.resized_crop(pixels, top, left, h, w, [size, size], InterpolationMode.BICUBIC, antialias=True)
    return (TF.horizontal_flip(crop) if flip else crop).contiguous()


def _identity_params() -> Tensor:
    p = torch.zeros(N_PARAMS)
    p[PARAM["brightness"] : PARAM["saturation"] + 1] = 1.0
    p[PARAM["order"] : PARAM["order"] + 4] = torch.arange(4, dtype=torch.float32)
    return p


def collate_views(batch: Sequence[ViewSample]) -> ViewBatch:
    n = len(batch[0].crops)
    out = ViewBatch(
        crops=[torch.stack([b.crops[i] for b in batch]) for i in range(n)],
        masks=[torch.stack([b.masks[i] for b in batch]) for i in range(n)],
        params=[torch.stack([b.params[i] for b in batch]) for i in range(n)],
        modality=torch.tensor([b.modality for b in batch], dtype=torch.int64),
    )
    if any(b.jpeg is not None for b in batch):
        geometry = torch.stack([b.geometry if b.geometry is not None else torch.zeros((n, 5), dtype=torch.int64)
                                for b in batch])
        out = out._replace(jpeg=[b.jpeg for b in batch], geometry=geometry)
    return out


def decode_deferred(batch: ViewBatch, crops: list[Tensor], device: torch.device | str) -> None:
    """Decode the batch's undecoded JPEGs in one ``torchvision.io.decode_jpeg`` call on ``device``
    (nvJPEG on CUDA) and write their crops into ``crops`` (the batch's crops, already on ``device``)."""
    if batch.jpeg is None or batch.geometry is None:
        return
    rows = [b for b, data in enumerate(batch.jpeg) if data is not None]
    if not rows:
        return
    from torchvision.io import ImageReadMode, decode_jpeg  # noqa: PLC0415 - only this path needs it

    images = decode_jpeg([batch.jpeg[b] for b in rows], mode=ImageReadMode.RGB, device=device)
    geometry = batch.geometry.tolist()  # a CPU tensor: no device sync
    for b, img in zip(rows, images):
        for c, target in enumerate(crops):
            top, left, h, w, flip = geometry[b][c]
            target[b] = _crop(img, top, left, h, w, target.shape[-1], bool(flip))


# -- the device half ---------------------------------------------------------------------------------
# torchvision's adjust_* functions take one factor per call; per-sample factors over a batch need
# these broadcasting versions (same formulas as torchvision's tensor kernels).
def _blend(x: Tensor, other: Tensor, f: Tensor) -> Tensor:
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def _rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r, g, b = x.unbind(-3)
    maxc, _ = x.max(dim=-3)
    minc, _ = x.min(dim=-3)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.remainder((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return h, s, maxc


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # sector i → (r, g, b) from (v, q, p, t) as in colorsys / torchvision
    r = torch.stack([v, q, p, p, t, v], dim=-3).gather(-3, i.unsqueeze(-3))
    g = torch.stack([t, v, v, q, p, p], dim=-3).gather(-3, i.unsqueeze(-3))
    b = torch.stack([p, p, t, v, v, q], dim=-3).gather(-3, i.unsqueeze(-3))
    return torch.cat([r, g, b], dim=-3)


def _adjust_hue(x: Tensor, f: Tensor) -> Tensor:
    h, s, v = _rgb_to_hsv(x)
    h = torch.remainder(h + f[:, :, 0], 1.0)
    return _hsv_to_rgb(h, s, v)


def _gaussian_kernels(sigma: Tensor, radius: int) -> Tensor:
    """``[B, 2r+1]`` normalised 1-D kernels; sigma 0 gives the identity (a delta)."""
    x = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    s = sigma.clamp(min=1e-6)[:, None]
    k = torch.exp(-0.5 * (x[None] / s) ** 2)
    k = k / k.sum(-1, keepdim=True)
    delta = (x == 0).float()[None].expand_as(k)
    return torch.where(sigma[:, None] > 0, k, delta)


class BatchPhotometric(nn.Module):
    """Device half of the recipe: ``uint8 [B,3,S,S]`` + parameters → normalised float32 crops.

    Order per crop, as the original: colour jitter (the four operations in the sample's own order),
    grayscale, Gaussian blur, solarize, then ``(x − mean) / std`` of the sample's modality (or no
    normalisation with ``normalize=False``). Every operation runs on the whole batch; a sample whose
    parameters say "not applied" passes through unchanged. Works on CUDA and CPU tensors.
    """

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize
        stats = [get_stats(m) for m in MODALITY_NAMES]
        self.register_buffer("mean", torch.tensor([s[0] for s in stats], dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor([s[1] for s in stats], dtype=torch.float32), persistent=False)
        self.blur_radius = int(math.ceil(3.0 * RECIPE.blur_radius[1]))  # ±3σ at the largest σ

    def forward(self, crops: Tensor, params: Tensor, modality: Tensor) -> Tensor:
        x = crops.float().div_(255.0)
        p = params.to(device=x.device, dtype=torch.float32)
        col = lambda name: p[:, PARAM[name]].view(-1, 1, 1, 1)  # noqa: E731
        jitter = p[:, PARAM["jitter"]] > 0
        order = p[:, PARAM["order"] : PARAM["order"] + 4].round().long()
        one = torch.ones_like(col("brightness"))
        black = torch.zeros((), device=x.device)
        for pos in range(4):
            op = order[:, pos]
            # each operation runs on every sample; where it is not this sample's turn the factor is
            # the identity (brightness/contrast/saturation 1) or the hue result is discarded.
            on = [(jitter & (op == k)).view(-1, 1, 1, 1) for k in range(4)]
            x = _blend(x, black, torch.where(on[0], col("brightness"), one))
            mean = TF.rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
            x = _blend(x, mean, torch.where(on[1], col("contrast"), one))
            x = _blend(x, TF.rgb_to_grayscale(x), torch.where(on[2], col("saturation"), one))
            x = torch.where(on[3], _adjust_hue(x, col("hue")), x)
        x = torch.where(col("grayscale") > 0, TF.rgb_to_grayscale(x).expand_as(x), x)
        x = self._blur(x, p[:, PARAM["sigma"]])
        threshold = RECIPE.solarize_threshold / 255.0
        x = torch.where((col("solarize") > 0) & (x >= threshold), 1.0 - x, x)
        if self.normalize:
            idx = modality.to(device=x.device, dtype=torch.long)
            x = (x - self.mean[idx].view(-1, 3, 1, 1)) / self.std[idx].view(-1, 3, 1, 1)
        return x

    def _blur(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Separable Gaussian blur, one grouped convolution per axis with each sample's own kernel.

        Edges are replicated, as PIL's box-blur passes do.
        """
        b, c, h, w = x.shape
        r = self.blur_radius
        k = _gaussian_kernels(sigma, r).repeat_interleave(c, dim=0)  # [B*C, 2r+1]
        y = F.pad(x.reshape(1, b * c, h, w), (r, r, r, r), mode="replicate")
        y = F.conv2d(y, k.view(b * c, 1, 1, 2 * r + 1), groups=b * c)
        y = F.conv2d(y, k.view(b * c, 1, 2 * r + 1, 1), groups=b * c)
        return y.view(b, c, h, w).clamp_(0.0, 1.0)
