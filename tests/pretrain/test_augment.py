"""Multi-crop views, per-modality normalisation and masks (reference §4.2, §4.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from visionfm.data.modalities import get_stats
from visionfm.pretrain.augment import IBOTAugmentation, PILGaussianBlur
from visionfm.pretrain.masking import PretrainMasker


def noise_image(h: int = 250, w: int = 230, seed: int = 0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr)


def constant_image(rgb: tuple[float, float, float], size: int = 240) -> Image.Image:
    """Constant image whose pixels are ``round(255 * rgb)``."""
    px = np.array([round(255 * c) for c in rgb], dtype=np.uint8)
    return Image.fromarray(np.broadcast_to(px, (size, size, 3)).copy())


def test_crop_count_and_sizes():
    aug = IBOTAugmentation(global_crops_number=2, local_crops_number=3)
    crops, masks = aug(noise_image(), "Fundus")
    assert [tuple(c.shape) for c in crops] == [(3, 224, 224)] * 2 + [(3, 96, 96)] * 3
    assert all(type(c) is torch.Tensor and c.dtype == torch.float32 for c in crops)
    assert [tuple(m.shape) for m in masks] == [(14, 14)] * 2 + [(6, 6)] * 3
    assert all(m.dtype == torch.bool for m in masks)


def test_default_masks_follow_original_defaults():
    aug = IBOTAugmentation(input_size=64, patch_size=16)
    _, masks = aug(noise_image(), "OCT")
    assert len(masks) == 2 and all(m.shape == (4, 4) for m in masks)


@pytest.mark.parametrize("modality", ["Fundus", "OCT", "slit-lamp", "UBM"])
def test_normalises_with_the_images_own_modality(modality):
    mean, std = get_stats(modality)
    aug = IBOTAugmentation(input_size=32, photometric=False, patch_size=16)
    crops, _ = aug(constant_image(mean), modality)
    # Quantisation to 8 bits moves a pixel by at most 0.5/255, i.e. 0.5/255/std after normalising.
    tol = 0.5 / 255 / min(std) + 1e-4
    for c in crops:
        assert c.abs().max().item() <= tol


def test_other_modality_statistics_give_other_values():
    mean_f, _ = get_stats("Fundus")
    mean_o, std_o = get_stats("OCT")
    aug = IBOTAugmentation(input_size=32, photometric=False)
    crops, _ = aug(constant_image(mean_f), "OCT")
    expected = [(round(255 * m) / 255 - mo) / so for m, mo, so in zip(mean_f, mean_o, std_o)]
    got = crops[0].mean(dim=(1, 2)).tolist()
    assert got == pytest.approx(expected, abs=1e-4)


def test_no_normalisation_gives_unit_range():
    aug = IBOTAugmentation(input_size=32, normalize=False, photometric=False)
    crops, _ = aug(constant_image((0.2, 0.4, 0.6)))
    assert crops[0].mean(dim=(1, 2)).tolist() == pytest.approx([51 / 255, 102 / 255, 153 / 255], abs=1e-6)
    with pytest.raises(ValueError, match="modality is required"):
        IBOTAugmentation(input_size=32)(constant_image((0.2, 0.4, 0.6)))
    with pytest.raises(ValueError, match="unknown modality"):
        IBOTAugmentation(input_size=32)(constant_image((0.2, 0.4, 0.6)), "CT")


def test_set_epoch_reaches_the_masker():
    masker = PretrainMasker(pred_ratio=0.3, pred_start_epoch=2)
    aug = IBOTAugmentation(input_size=64, mask_fn=masker.make_masks, local_crops_number=1, local_crops_size=32)
    _, masks = aug(noise_image(), "Fundus")
    assert not any(m.any() for m in masks)
    aug.set_epoch(2)
    _, masks = aug(noise_image(), "Fundus")
    assert masks[0].any() and masks[1].any() and masks[2].shape == (2, 2)


def test_masks_reproducible_with_explicit_rng_and_torch_seed():
    aug = IBOTAugmentation(input_size=64)
    _, a = aug(noise_image(), "Fundus", rng=np.random.default_rng(5))
    _, b = aug(noise_image(), "Fundus", rng=np.random.default_rng(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    torch.manual_seed(3)
    ca, ma = aug(noise_image(), "Fundus")
    torch.manual_seed(3)
    cb, mb = aug(noise_image(), "Fundus")
    assert all(torch.equal(x, y) for x, y in zip(ca + ma, cb + mb))


def test_grayscale_input_and_blur_probability():
    aug = IBOTAugmentation(input_size=32, local_crops_number=1, local_crops_size=16)
    crops, _ = aug(noise_image().convert("L"), "OCT")
    assert crops[0].shape == (3, 32, 32)
    img = noise_image(40, 40)
    assert PILGaussianBlur(p=0.0)(img) is img
    blurred = np.asarray(PILGaussianBlur(p=1.0, radius_min=1.5, radius_max=1.5)(img), dtype=float)
    assert blurred.std() < np.asarray(img, dtype=float).std()


def test_recipe_matches_reference():
    aug = IBOTAugmentation()
    text = repr(aug.global1) + repr(aug.global2) + repr(aug.local)
    assert "scale=(0.32, 1.0), ratio=(0.8, 1.2), interpolation=InterpolationMode.BICUBIC" in text
    assert "scale=(0.05, 0.4), ratio=(0.75, 1.3333333333333333), interpolation=InterpolationMode.BICUBIC" in text
    assert "PILGaussianBlur(p=1.0" in repr(aug.global1) and "Solarize" not in repr(aug.global1)
    assert "PILGaussianBlur(p=0.1" in repr(aug.global2) and "RandomSolarize(p=0.2, threshold=128" in repr(aug.global2)
    assert "PILGaussianBlur(p=0.5" in repr(aug.local)
    assert "ColorJitter(brightness=(0.6, 1.4), contrast=(0.6, 1.4), saturation=(0.8, 1.2), hue=(-0.1, 0.1))" in text
