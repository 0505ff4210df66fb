"""Segmentation / landmark task plug-ins: label reading, errors, and metrics on hand-computed cases."""

import numpy as np
import pytest
import torch
from PIL import Image

from visionfm.errors import DataFormatError
from visionfm.tasks.landmark import Landmark
from visionfm.tasks.segmentation import Segmentation, predict_labels

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _write_pair(root, name, mask_img, size=(32, 32), split="training"):
    d = root / "ds" / split
    (d / "images").mkdir(parents=True, exist_ok=True)
    (d / "labels").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(d / "images" / f"{name}.png")
    mask_img.save(d / "labels" / f"{name}.png")


def test_palette_and_grayscale_masks_read_as_class_ids(tmp_path):
    ids = np.zeros((32, 32), np.uint8)
    ids[4:10, 4:10] = 1
    ids[20:30, 2:12] = 3
    pal = Image.fromarray(ids, mode="P")
    pal.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10, 10, 10, 200] + [0] * 756)
    _write_pair(tmp_path, "a_palette", pal)
    _write_pair(tmp_path, "b_gray", Image.fromarray(ids, mode="L"))
    task = Segmentation(4, 32, MEAN, STD)
    ds = task.dataset(str(tmp_path), "training", train=False)
    for i in range(2):
        img, mask, hw, idx = ds[i]
        assert torch.equal(mask, torch.from_numpy(ids.astype(np.int64))), ds.names[i]
        assert hw.tolist() == [32, 32] and idx == i and img.shape == (3, 32, 32)


def test_binary_255_mask_and_bad_masks_fail_clearly(tmp_path):
    ids = np.zeros((32, 32), np.uint8)
    ids[:5] = 255
    _write_pair(tmp_path, "ok", Image.fromarray(ids, mode="L"))
    ds = Segmentation(1, 32, MEAN, STD).dataset(str(tmp_path), "training", train=False)
    assert set(torch.unique(ds[0][1]).tolist()) == {0, 1}

    bad = tmp_path / "bad_ids"
    ids4 = np.zeros((32, 32), np.uint8)
    ids4[0, 0] = 4
    _write_pair(bad, "x", Image.fromarray(ids4, mode="L"))
    ds = Segmentation(4, 32, MEAN, STD).dataset(str(bad), "training", train=False)
    with pytest.raises(DataFormatError, match="class id 4"):
        ds[0]

    small = tmp_path / "bad_size"
    _write_pair(small, "y", Image.fromarray(np.zeros((16, 24), np.uint8), mode="L"))
    ds = Segmentation(4, 32, MEAN, STD).dataset(str(small), "training", train=False)
    with pytest.raises(DataFormatError, match="24x16"):
        ds[0]


def test_segmentation_metrics_hand_computed():
    task = Segmentation(3, 4, MEAN, STD)
    target = torch.tensor([[[0, 1, 1, 2], [0, 1, 1, 2], [0, 0, 0, 0], [0, 0, 0, 0]]])
    pred = torch.tensor([[[0, 1, 0, 2], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1]]])
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    meter = task.new_meter()
    task.update(meter, logits, target, torch.tensor([[4, 4]]))
    m = meter.compute()
    # class 1: |P|=4, |G|=4, |P∩G|=3 -> Dice 6/8, IoU 3/5; class 2: |P|=1, |G|=2, ∩=1 -> 2/3, 1/2
    assert m["per_class"]["class 1"]["dice"] == pytest.approx(0.75)
    assert m["per_class"]["class 1"]["iou"] == pytest.approx(0.6)
    assert m["per_class"]["class 2"]["dice"] == pytest.approx(2 / 3)
    assert m["dice_mean"] == pytest.approx((0.75 + 2 / 3) / 2)  # background excluded
    assert m["background_included"] is False
    assert task.summary(m)["iou_mean"] == pytest.approx((0.6 + 0.5) / 2)


def test_binary_prediction_threshold_and_hd95():
    logits = torch.tensor([[[[0.1, -0.1], [2.0, -5.0]]]])
    assert predict_labels(logits).tolist() == [[[1, 0], [1, 0]]]
    task = Segmentation(1, 8, MEAN, STD)
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:5, 2:5] = 1
    meter = task.new_meter()
    task.update(meter, (target.float() * 2 - 1)[:, None], target, torch.tensor([[8, 8]]))
    m = meter.compute()
    assert m["dice_mean"] == 1.0 and m["hd95_mean"] == 0.0


def test_landmark_metrics_at_input_and_original_resolution():
    task = Landmark(2, 8, MEAN, STD, sigma=1.0)
    logits = torch.full((1, 2, 8, 8), -50.0)
    logits[0, 0, 2, 3] = 50.0  # predicted (x=3, y=2)
    logits[0, 1, 6, 6] = 50.0  # predicted (x=6, y=6)
    truth = torch.tensor([[[3.0, 2.0], [3.0, 2.0]]])
    meter = task.new_meter()
    task.update(meter, logits, truth, torch.tensor([[16, 32]]))  # original H=16, W=32 -> scale x4, y2
    m = meter.compute()
    assert m["mre_px"] == pytest.approx((0 + 5.0) / 2)  # (3,4) offset -> 5 px at input size
    assert m["mre_original_px"] == pytest.approx((0 + (12**2 + 8**2) ** 0.5) / 2)
    assert m["success_rate_px"]["2px"] == pytest.approx(0.5)
    assert list(m["per_landmark"].values())[1]["mre_px"] == pytest.approx(5.0)


def test_landmark_loss_prefers_the_true_location():
    task = Landmark(1, 16, MEAN, STD, sigma=1.5)
    truth = torch.tensor([[[5.0, 9.0]]])
    good = torch.zeros(1, 1, 16, 16)
    good[0, 0, 9, 5] = 8.0
    bad = torch.zeros(1, 1, 16, 16)
    bad[0, 0, 2, 12] = 8.0
    assert task.loss(good, truth) < task.loss(bad, truth)
