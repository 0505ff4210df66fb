"""The device path (workers: reduced decode + crop + flip; device: batched photometry) draws crops
from the same distribution as the PIL path (the original's recipe, full-size decoding).

Over 400 JPEG images each statistic below, per crop kind (global 1, global 2, local), must lie
within 3 standard errors of the PIL path's mean (standard error of the difference of two
independent means, sqrt(se_device² + se_pil²)):

* mean and standard deviation of each channel, in pixel units ([0, 1], normalisation undone);
* share of grayscale crops (every pixel's channels within 2/255 of each other);
* share of pixels at or above the solarize threshold 128/255 (solarisation maps them below it, so
  this share falls by the solarized share of the global-2 crops);
* sharpness: mean absolute 4-neighbour Laplacian of the luminance (blur lowers it);
* luminance spread: ``(mean luminance − 0.5)²`` per crop;
* per image, the squared difference of the two global crops' mean luminance (the colour jitter
  makes two crops of one image differ);
* crop area fraction and log aspect (w/h) of the RandomResizedCrop boxes.

Each test also checks that the statistic can see a wrong recipe: a device path with a broken
parameter (no solarize, no grayscale, no blur, narrow crops) fails the same bound.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from visionfm.data.layouts.pretrain import PretrainImages
from visionfm.data.modalities import get_stats
from visionfm.pretrain.augment import IBOTAugmentation
from visionfm.pretrain.data import PretrainCropDataset
from visionfm.pretrain.masking import PretrainMasker
from visionfm.pretrain.views import (
    PARAM,
    BatchPhotometric,
    GeometricViews,
    collate_views,
    decode_deferred,
    min_decode_pixels,
    view_specs,
)

N_IMAGES = 400
SIZE = 448  # JPEG side: global crops decode at 1/4, local crops at 1/2 (see test_reduced_decode_factors)
GLOBAL, LOCAL = 48, 24
KINDS = ("global1", "global2", "local1", "local2")
RECIPE_KW = dict(input_size=GLOBAL, global_crops_scale=(0.32, 1.0), local_crops_scale=(0.05, 0.4),
                 global_crops_number=2, local_crops_number=2, local_crops_size=LOCAL)


def _write_images(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """Colourful, textured, partly bright photographs (so every statistic has something to see)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        base = rng.uniform(0.15, 0.85, 3)
        grad = rng.uniform(-0.4, 0.4, (2, 3))
        img = base + xx[..., None] * grad[0] + yy[..., None] * grad[1]
        for _ in range(4):  # bright and dark blobs
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.25)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
            img = img + blob * rng.uniform(-0.5, 0.6, 3)
        freq = rng.uniform(8, 40)
        img = img + 0.08 * np.sin(2 * np.pi * freq * (xx + rng.uniform() * yy))[..., None]  # fine texture
        img = img + rng.normal(0, 0.02, img.shape)
        arr = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i:04d}.jpg", quality=92)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("equiv")
    _write_images(root / "Fundus", N_IMAGES, SIZE)
    return root


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    mean, std = get_stats("Fundus")
    return x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)


def _crop_stats(x: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-crop statistics of ``[N, 3, S, S]`` crops in [0, 1] units."""
    x = x.clamp(0, 1)
    out = {}
    for c, name in enumerate("rgb"):
        out[f"mean_{name}"] = x[:, c].mean((-2, -1)).numpy()
        out[f"std_{name}"] = x[:, c].std((-2, -1)).numpy()
    spread = (x.max(1).values - x.min(1).values).amax((-2, -1))
    out["gray_share"] = (spread < 2 / 255).float().numpy()
    out["bright_share"] = (x >= 128 / 255).float().mean((1, 2, 3)).numpy()
    lum = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    lap = 4 * lum[:, 1:-1, 1:-1] - lum[:, :-2, 1:-1] - lum[:, 2:, 1:-1] - lum[:, 1:-1, :-2] - lum[:, 1:-1, 2:]
    out["sharpness"] = lap.abs().mean((-2, -1)).numpy()
    out["lum_spread"] = ((lum.mean((-2, -1)) - 0.5) ** 2).numpy()  # its mean grows with brightness jitter
    return out


def _with_pair(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Adds the one cross-crop statistic: the squared difference of the two global crops' mean
    luminance per image (two crops of one image differ in colour mostly through the jitter)."""
    def lum(kind):
        m = stats[kind]
        return 0.299 * m["mean_r"] + 0.587 * m["mean_g"] + 0.114 * m["mean_b"]

    stats["pair"] = {"global_lum_diff2": (lum("global1") - lum("global2")) ** 2}
    return stats


def _boxes_stats(scale: np.ndarray, aspect: np.ndarray) -> dict[str, np.ndarray]:
    return {"crop_scale": scale, "crop_log_aspect": np.log(aspect)}


def _masker() -> PretrainMasker:
    return PretrainMasker(patch_size=8)


class _RecordBoxes:
    """Records every RandomResizedCrop box of the device path's workers (area fraction, w/h)."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        from torchvision.transforms import RandomResizedCrop

        self.boxes: list[tuple[float, float]] = []
        real = RandomResizedCrop.get_params

        def spy(img, scale, ratio):
            top, left, h, w = real(img, scale, ratio)
            self.boxes.append((h * w / (img.shape[-1] * img.shape[-2]), w / h))
            return top, left, h, w

        mp.setattr(RandomResizedCrop, "get_params", staticmethod(spy))

    def per_kind(self, n: int) -> np.ndarray:
        return np.array(self.boxes).reshape(n, len(KINDS), 2)


def _pil_path(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """The original's recipe: full decode, PIL augmentation in the worker; RRC boxes recorded."""
    aug = IBOTAugmentation(**RECIPE_KW, patch_size=8, mask_fn=_masker().make_masks)
    boxes: list[tuple[float, float]] = []
    real = v2.RandomResizedCrop.make_params

    def spy(self, flat_inputs):
        params = real(self, flat_inputs)
        w_img, h_img = flat_inputs[0].size
        boxes.append((params["height"] * params["width"] / (w_img * h_img), params["width"] / params["height"]))
        return params

    ds = PretrainCropDataset(PretrainImages(root, "Fundus", min_pixels=0), aug, seed=11)
    crops: list[list[torch.Tensor]] = [[] for _ in KINDS]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(v2.RandomResizedCrop, "make_params", spy)
        for i in range(N_IMAGES):
            views, _ = ds[(0, i)]
            for k, v in enumerate(views):
                crops[k].append(v)
    b = np.array(boxes).reshape(N_IMAGES, len(KINDS), 2)
    return _with_pair({
        kind: _crop_stats(_unnormalise(torch.stack(crops[k]))) | _boxes_stats(b[:, k, 0], b[:, k, 1])
        for k, kind in enumerate(KINDS)
    })


def _device_batches(root: Path) -> list:
    """The workers' half: reduced decode, crop and flip, collated in batches of 100."""
    specs = view_specs(**RECIPE_KW)
    views = GeometricViews(specs, _masker().make_masks)
    ds = PretrainCropDataset(PretrainImages(root, "Fundus", min_pixels=min_decode_pixels(specs)), views, seed=11)
    with pytest.MonkeyPatch.context() as mp:
        rec = _RecordBoxes(mp)
        batches = [collate_views([ds[(0, i)] for i in range(start, start + 100)]) for start in range(0, N_IMAGES, 100)]
    return batches, rec.per_kind(N_IMAGES)


def _device_path(worked: tuple, tamper=None) -> dict[str, dict[str, np.ndarray]]:
    """The device half (here on CPU tensors) over the workers' ``(batches, boxes)``; ``tamper``
    edits parameters."""
    batches, b = worked
    photometric = BatchPhotometric()
    out_crops: list[list[torch.Tensor]] = [[] for _ in KINDS]
    for batch in batches:
        params = [p.clone() for p in batch.params]
        if tamper is not None:
            tamper(params)
        for k, (c, p) in enumerate(zip(batch.crops, params)):
            out_crops[k].append(photometric(c, p, batch.modality))
    return _with_pair({
        kind: _crop_stats(_unnormalise(torch.cat(out_crops[k]))) | _boxes_stats(b[:, k, 0], b[:, k, 1])
        for k, kind in enumerate(KINDS)
    })


def _z_scores(a: dict[str, dict[str, np.ndarray]], b: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    z = {}
    for kind in a:
        for stat, va in a[kind].items():
            vb = b[kind][stat]
            se = math.sqrt(va.var(ddof=1) / len(va) + vb.var(ddof=1) / len(vb))
            diff = float(va.mean() - vb.mean())
            z[f"{kind}/{stat}"] = 0.0 if se == 0 and diff == 0 else abs(diff) / max(se, 1e-12)
    return z


@pytest.fixture(scope="module")
def pil_stats(image_root):
    return _pil_path(image_root)


@pytest.fixture(scope="module")
def device_batches(image_root):
    return _device_batches(image_root)


@pytest.fixture(scope="module")
def device_stats(device_batches):
    return _device_path(device_batches)


def test_reduced_decode_factors(image_root):
    """Global crops (48 px) need ≥ 9,379 source pixels: a 448-px JPEG decodes at 1/4 (112 px);
    with the 24-px locals (scale 0.05) it needs 16,667: 1/2 (224 px)."""
    only_global = view_specs(input_size=GLOBAL, global_crops_number=2, local_crops_number=0)
    both = view_specs(**RECIPE_KW)
    path = next((image_root / "Fundus").iterdir())
    assert PretrainImages(image_root, "Fundus", min_pixels=min_decode_pixels(only_global))[0][0].size == (112, 112)
    assert PretrainImages(image_root, "Fundus", min_pixels=min_decode_pixels(both))[0][0].size == (224, 224)
    assert PretrainImages(image_root, "Fundus")[0][0].size == (SIZE, SIZE)
    assert Image.open(path).size == (SIZE, SIZE)


def test_reduced_decode_never_upsamples_a_crop():
    """The bound holds at the recipe's extremes: smallest area and most extreme aspect, any image shape."""
    from torchvision.transforms import RandomResizedCrop

    for spec in view_specs(224, local_crops_number=2):
        need = min_decode_pixels([spec])
        for w, h in [(1024, 1024), (1600, 1200), (700, 2100)]:
            scale = math.sqrt(need / (w * h))
            sc = next((f for f in (8, 4, 2, 1) if f <= 1 / scale), 1)
            rw, rh = math.ceil(w / sc), math.ceil(h / sc)  # what Image.draft returns
            img = Image.new("RGB", (rw, rh))
            torch.manual_seed(0)
            for _ in range(300):
                _, _, ch, cw = RandomResizedCrop.get_params(img, list(spec.scale), list(spec.ratio))
                if ch * cw <= spec.scale[0] * rw * rh * 1.05:  # the small crops are the ones that matter
                    assert min(ch, cw) >= spec.size
            squeeze = min(spec.ratio[0], 1 / spec.ratio[1])
            assert math.sqrt(spec.scale[0] * squeeze * rw * rh) >= spec.size


def test_device_path_matches_pil_path_statistics(pil_stats, device_stats):
    z = _z_scores(device_stats, pil_stats)
    assert len(z) == len(KINDS) * 12 + 1
    worst = sorted(z.items(), key=lambda kv: -kv[1])[:5]
    assert all(v <= 3.0 for v in z.values()), f"statistics beyond 3 SE: {worst}"
    # the recipe's effects are present at all (the comparison is not vacuous)
    assert 0.1 < pil_stats["global1"]["gray_share"].mean() < 0.3
    assert device_stats["global2"]["bright_share"].mean() < device_stats["global1"]["bright_share"].mean()
    assert device_stats["global1"]["sharpness"].mean() < 0.8 * device_stats["global2"]["sharpness"].mean()


def _without(name: str):
    def tamper(params):
        for p in params:
            p[:, PARAM[name]] = 0.0

    return tamper


@pytest.mark.parametrize(
    "name, stat",
    [("solarize", "global2/bright_share"), ("grayscale", "global1/gray_share"), ("sigma", "global1/sharpness"),
     ("jitter", "pair/global_lum_diff2")],
)
def test_statistics_detect_a_broken_recipe(device_batches, pil_stats, name, stat):
    broken = _device_path(device_batches, tamper=_without(name))
    z = _z_scores(broken, pil_stats)
    assert z[stat] > 3.0, (name, stat, z[stat])


def test_photometric_runs_the_same_on_each_sample_alone():
    """Batching is exact: a sample's output does not depend on its batch neighbours."""
    torch.manual_seed(0)
    specs = view_specs(32, local_crops_number=0)
    from visionfm.pretrain.views import draw_photometric

    params = torch.stack([draw_photometric(specs[i % 2]) for i in range(6)])
    params[:, PARAM["jitter"]] = 1.0
    params[:, PARAM["sigma"]] = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 0.3])
    crops = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    modality = torch.tensor([0, 1, 2, 3, 4, 5])
    bp = BatchPhotometric()
    full = bp(crops, params, modality)
    for i in range(6):
        one = bp(crops[i : i + 1], params[i : i + 1], modality[i : i + 1])
        torch.testing.assert_close(one, full[i : i + 1], rtol=1e-5, atol=1e-5)


def test_photometric_matches_torchvision_per_operation():
    """Each batched operation equals torchvision's tensor kernel with that sample's factor."""
    from torchvision.transforms.v2 import functional as TF

    torch.manual_seed(1)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    xf = x.float() / 255
    ident = torch.zeros(4, 12)
    ident[:, 1:4] = 1.0
    ident[:, 5:9] = torch.arange(4).float()
    bp = BatchPhotometric(normalize=False)
    cases = {
        0: ("brightness", TF.adjust_brightness, [0.6, 0.9, 1.2, 1.4]),
        1: ("contrast", TF.adjust_contrast, [0.6, 0.9, 1.2, 1.4]),
        2: ("saturation", TF.adjust_saturation, [0.8, 0.9, 1.1, 1.2]),
        3: ("hue", TF.adjust_hue, [-0.1, -0.03, 0.05, 0.1]),
    }
    for op, (name, fn, factors) in cases.items():
        p = ident.clone()
        p[:, PARAM["jitter"]] = 1.0
        p[:, PARAM[name]] = torch.tensor(factors)
        # this op first, the others at their identity factors
        p[:, 5:9] = torch.tensor([op] + [k for k in range(4) if k != op]).float()
        got = bp(x, p, torch.zeros(4, dtype=torch.long))
        want = torch.stack([fn(xf[i], factors[i]) for i in range(4)])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-4, msg=name)
    p = ident.clone()
    p[:, PARAM["grayscale"]] = torch.tensor([1.0, 0.0, 1.0, 0.0])
    got = bp(x, p, torch.zeros(4, dtype=torch.long))
    gray = TF.rgb_to_grayscale(xf, num_output_channels=3)
    torch.testing.assert_close(got[0], gray[0])
    torch.testing.assert_close(got[1], xf[1])
    p = ident.clone()
    p[:, PARAM["solarize"]] = 1.0
    got = bp(x, p, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(got, TF.solarize(xf, 128 / 255))


# -- --decode gpu: the workers only read the files; the batch decodes (nvJPEG on CUDA) and crops on the device.
# decode_deferred runs the same code with torchvision's CPU decoder here.


def _deferred_batches(root: Path, n: int = N_IMAGES) -> list:
    specs = view_specs(**RECIPE_KW)
    views = GeometricViews(specs, _masker().make_masks)
    images = PretrainImages(root, "Fundus", min_pixels=min_decode_pixels(specs), defer_jpeg=True)
    ds = PretrainCropDataset(images, views, seed=11)
    out = []
    with pytest.MonkeyPatch.context() as mp:
        rec = _RecordBoxes(mp)
        for start in range(0, n, 100):
            batch = collate_views([ds[(0, i)] for i in range(start, min(start + 100, n))])
            crops = [c.clone() for c in batch.crops]
            decode_deferred(batch, crops, "cpu")
            out.append(batch._replace(crops=crops))
    return out, rec.per_kind(n)


def test_deferred_decode_matches_pil_path_statistics(image_root, pil_stats):
    z = _z_scores(_device_path(_deferred_batches(image_root)), pil_stats)
    worst = sorted(z.items(), key=lambda kv: -kv[1])[:5]
    assert all(v <= 3.0 for v in z.values()), f"statistics beyond 3 SE: {worst}"


def test_deferred_decode_crops_exactly_and_mixes_formats(tmp_path):
    """JPEG rows are decoded whole on the device and cropped with the worker's boxes; a PNG in the
    same batch is decoded and cropped in the worker."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as TF

    from visionfm.pretrain.views import _crop

    folder = tmp_path / "Fundus"
    _write_images(folder, 3, 96, seed=5)
    Image.open(folder / "0002.jpg").save(folder / "0002.png")
    (folder / "0002.jpg").unlink()
    specs = view_specs(input_size=32, local_crops_number=1, local_crops_size=16)
    views = GeometricViews(specs, PretrainMasker(patch_size=8).make_masks)
    images = PretrainImages(tmp_path, "Fundus", defer_jpeg=True)
    ds = PretrainCropDataset(images, views, seed=3)
    samples = [ds[(0, i)] for i in range(3)]
    assert [s.jpeg is not None for s in samples] == [True, True, False]
    batch = collate_views(samples)
    assert batch.geometry.shape == (3, 3, 5)
    crops = [c.clone() for c in batch.crops]
    decode_deferred(batch, crops, "cpu")
    for b in range(2):
        full = decode_jpeg(torch.frombuffer(bytearray((folder / f"000{b}.jpg").read_bytes()), dtype=torch.uint8),
                           mode=ImageReadMode.RGB)
        for c, spec in enumerate(specs):
            top, left, h, w, flip = batch.geometry[b, c].tolist()
            want = _crop(full, top, left, h, w, spec.size, bool(flip))
            assert torch.equal(crops[c][b], want)
            assert crops[c][b].float().std() > 0  # not the placeholder
    for c in range(3):  # the PNG row came decoded from the worker and is left as it was
        assert torch.equal(crops[c][2], batch.crops[c][2]) and batch.crops[c][2].float().std() > 0
    assert TF.get_size(crops[0]) == [32, 32]


def test_decode_gpu_needs_cuda(tmp_path, capsys):
    from visionfm.cli.main import main as cli_main

    _write_images(tmp_path / "Fundus", 4, 64)
    code = cli_main(["pretrain", "--data_path", str(tmp_path), "--arch", "vit_tiny", "--input_size", "32",
                     "--batch_size_per_gpu", "2", "--epochs", "1", "--warmup_epochs", "0", "--name", "x",
                     "--output_dir", str(tmp_path / "out"), "--device", "cpu", "--decode", "gpu", "--num_workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--decode gpu" in err and "CUDA" in err
    assert not (tmp_path / "out" / "x" / "checkpoint.pth").exists()
