"""Joint transforms keep masks and keypoints aligned with the image; heatmap rendering and decoding."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from visionfm.data.paired import LandmarkTransform, SegTransform, decode_heatmaps, render_heatmaps, to_uint8_image

MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def _blob_image(size, mask):
    arr = np.zeros((size, size, 3), np.uint8)
    arr[mask.astype(bool)] = 255
    return Image.fromarray(arr)


@pytest.mark.parametrize("extra", [(), (v2.RandomCrop(48, pad_if_needed=True), v2.Resize((64, 64))),
                                   (v2.RandomRotation(30),)])
def test_seg_transform_keeps_mask_on_image(extra):
    mask = np.zeros((64, 64), np.int64)
    mask[10:30, 5:20] = 1
    mask[40:60, 30:62] = 1
    image = _blob_image(64, mask)
    tf = SegTransform(64, MEAN, STD, train=True, extra=extra)
    for seed in range(6):
        torch.manual_seed(seed)
        img, m = tf(image, tv_tensors.Mask(torch.from_numpy(mask)))
        assert m.dtype == torch.int64 and m.shape == (64, 64) and img.shape == (3, 64, 64)
        bright = img[0] > 0.5
        agree = (bright == (m == 1)).float().mean().item()
        assert agree > 0.97, (seed, agree)  # only interpolated border pixels may differ


def test_seg_transform_flips_are_exact_and_resize_is_nearest():
    mask = np.zeros((32, 32), np.int64)
    mask[0:4, 0:8] = 2
    image = _blob_image(32, mask > 0)
    tf = SegTransform(32, MEAN, STD, train=True)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        img, m = tf(image, tv_tensors.Mask(torch.from_numpy(mask)))
        assert torch.equal(img[0] > 0.5, m == 2)
        seen.add((bool(m[0, 0] == 2), bool(m[-1, 0] == 2), bool(m[0, -1] == 2), bool(m[-1, -1] == 2)))
    assert len(seen) == 4  # every flip combination occurred
    img, m = SegTransform(16, MEAN, STD, train=False)(image, tv_tensors.Mask(torch.from_numpy(mask)))
    assert set(torch.unique(m).tolist()) <= {0, 2}  # nearest: no interpolated ids
    assert m.shape == (16, 16) and int((m == 2).sum()) == 2 * 4


def _point_image(size, points, half=0):
    arr = np.zeros((size, size, 3), np.uint8)
    for x, y in points:
        arr[int(y) - half:int(y) + half + 1, int(x) - half:int(x) + half + 1] = 255
    return Image.fromarray(arr)


def test_landmark_flip_maps_pixel_index_exactly():
    pts = np.array([[5.0, 7.0], [20.0, 3.0]], np.float32)
    image = _point_image(32, pts)
    tf = LandmarkTransform(32, MEAN, STD, train=True, affine_p=0.0)
    flipped = 0
    for seed in range(8):
        torch.manual_seed(seed)
        img, out = tf(image, tv_tensors.KeyPoints(torch.from_numpy(pts), canvas_size=(32, 32)))
        for x, y in out.tolist():
            assert img[0, int(round(y)), int(round(x))] > 0.9
        if out[0, 0] != 5.0:
            flipped += 1
            assert out[0].tolist() == [32 - 1 - 5.0, 7.0]
    assert 0 < flipped < 8


@pytest.mark.parametrize("extra", [(), (v2.RandomRotation(40),), (v2.RandomCrop(40), v2.Resize((48, 48)))])
def test_landmark_points_follow_the_image(extra):
    pts = np.array([[20.0, 20.0], [30.0, 12.0], [14.0, 34.0]], np.float32)
    image = _point_image(48, pts, half=1)
    tf = LandmarkTransform(48, MEAN, STD, train=True, affine_p=1.0, degrees=10, extra=extra)
    for seed in range(5):
        torch.manual_seed(seed)
        img, out = tf(image, tv_tensors.KeyPoints(torch.from_numpy(pts), canvas_size=(48, 48)))
        for k, (x, y) in enumerate(out.tolist()):
            if math.isnan(x):
                continue
            # Brightness-weighted centre of the blob in a window around the predicted point.
            r0, c0 = int(round(y)), int(round(x))
            win = img[0, max(r0 - 4, 0):r0 + 5, max(c0 - 4, 0):c0 + 5]
            ys, xs = torch.meshgrid(torch.arange(win.shape[0]), torch.arange(win.shape[1]), indexing="ij")
            cy = float((win * ys).sum() / win.sum()) + max(r0 - 4, 0)
            cx = float((win * xs).sum() / win.sum()) + max(c0 - 4, 0)
            assert abs(cx - x) < 0.8 and abs(cy - y) < 0.8, (seed, k, (x, y), (cx, cy))


def test_landmark_resize_scales_pixel_centres():
    pts = np.array([[4.5, 10.5]], np.float32)  # centre of the 2x2 block of pixels 4..5, 10..11
    image = _point_image(32, pts)
    img, out = LandmarkTransform(16, MEAN, STD, train=False)(
        image, tv_tensors.KeyPoints(torch.from_numpy(pts), canvas_size=(32, 32)))
    assert out.tolist() == [[2.0, 5.0]]
    pts_out = np.array([[31.0, 31.0]], np.float32)
    tf = LandmarkTransform(32, MEAN, STD, train=True, affine_p=1.0, degrees=0, translate=0.5, hflip=False)
    outs = []
    for seed in range(10):
        torch.manual_seed(seed)
        outs.append(tf(image, tv_tensors.KeyPoints(torch.from_numpy(pts_out), canvas_size=(32, 32)))[1])
    assert any(torch.isnan(o).all() for o in outs)  # translated off the canvas -> missing


def test_render_and_decode_heatmaps():
    pts = torch.tensor([[[10.0, 5.0], [3.25, 20.5], [float("nan"), float("nan")]]])
    maps = render_heatmaps(pts, 24, 32, sigma=1.5)
    assert maps.shape == (1, 3, 24, 32)
    assert torch.allclose(maps[0, :2].sum((-2, -1)), torch.ones(2), atol=1e-5)
    assert maps[0, 2].abs().sum() == 0
    assert maps[0, 0].argmax().item() == 5 * 32 + 10
    dec = decode_heatmaps(torch.log(maps[:, :2] + 1e-12))
    assert torch.allclose(dec[0, 0], torch.tensor([10.0, 5.0]), atol=1e-4)
    raw = decode_heatmaps(torch.log(maps[:, :2] + 1e-12), refine=False)
    assert raw[0, 1].tolist() in ([3.0, 20.0], [3.0, 21.0])  # the arg-max pixel
    truth = torch.tensor([3.25, 20.5])
    # The 3x3 centroid moves towards the true sub-pixel position on both axes.
    assert ((dec[0, 1] - truth).abs() < (raw[0, 1] - truth).abs()).all()


def test_to_uint8_image_inverts_normalize():
    x = torch.rand(3, 4, 5)
    mean, std = (0.4, 0.3, 0.2), (0.2, 0.25, 0.1)
    norm = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    back = to_uint8_image(norm, mean, std)
    assert back.shape == (4, 5, 3) and back.dtype == torch.uint8
    assert (back.permute(2, 0, 1).float() - x * 255).abs().max() <= 0.51
