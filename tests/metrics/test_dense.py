"""Segmentation and landmark meters on tiny hand-made masks and points.

Every expected number is worked out by hand in the comments next to it.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch

from tests.metrics import golden_inputs, golden_values
from visionfm.metrics import LandmarkMeter, SegmentationMeter, dice_iou, hausdorff95, radial_errors


def _masks():
    # Image A (4x4), classes 0..2.
    target_a = np.array(
        [
            [0, 0, 1, 1],
            [0, 0, 1, 1],
            [2, 2, 0, 0],
            [2, 2, 0, 0],
        ]
    )
    pred_a = np.array(
        [
            [0, 1, 1, 1],
            [0, 0, 1, 0],
            [2, 0, 0, 0],
            [2, 2, 0, 0],
        ]
    )
    # Image B: class 2 absent from both prediction and truth.
    target_b = np.array(
        [
            [1, 1, 0, 0],
            [1, 1, 0, 0],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
        ]
    )
    pred_b = np.array(
        [
            [1, 0, 0, 0],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
        ]
    )
    return np.stack([pred_a, pred_b]), np.stack([target_a, target_b])


# Hand counts, image A: class 1: |P|=4, |G|=4, |P∩G|=3 -> Dice 6/8, IoU 3/5.
#                       class 2: |P|=3, |G|=4, |P∩G|=3 -> Dice 6/7, IoU 3/4.
#                       class 0: |P|=9, |G|=8, |P∩G|=7 -> Dice 14/17, IoU 7/10.
# Image B: class 1: |P|=1, |G|=4, ∩=1 -> Dice 2/5, IoU 1/4; class 2 empty/empty -> 1, 1;
#          class 0: |P|=15, |G|=12, ∩=12 -> Dice 24/27, IoU 12/15.
DICE_A = [14 / 17, 6 / 8, 6 / 7]
IOU_A = [7 / 10, 3 / 5, 3 / 4]
DICE_B = [24 / 27, 2 / 5, 1.0]
IOU_B = [12 / 15, 1 / 4, 1.0]


def test_dice_iou_functional():
    pred, target = _masks()
    dice, iou = dice_iou(pred, target, 3)
    np.testing.assert_allclose(dice, [DICE_A, DICE_B])
    np.testing.assert_allclose(iou, [IOU_A, IOU_B])
    d1, i1 = dice_iou(torch.tensor(pred[0]), torch.tensor(target[0]), 3)
    assert d1.shape == (3,) and d1.tolist() == pytest.approx(DICE_A)


def test_segmentation_meter_per_class_and_means():
    pred, target = _masks()
    meter = SegmentationMeter(num_classes=3, class_names=["bg", "disc", "cup"])
    meter.update(pred[:1], target[:1])
    meter.update(torch.tensor(pred[1:]), torch.tensor(target[1:]))
    r = meter.compute()
    assert r["n_images"] == 2 and r["background_included"] is False
    assert r["per_class"]["disc"]["dice"] == pytest.approx((6 / 8 + 2 / 5) / 2)
    assert r["per_class"]["cup"]["dice"] == pytest.approx((6 / 7 + 1.0) / 2)
    assert r["per_class"]["cup"]["iou"] == pytest.approx((3 / 4 + 1.0) / 2)
    assert r["per_class"]["cup"]["n_images_both_empty"] == 1
    # Pooled over images: disc ∩ = 3+1, |P|+|G| = 8+5 -> 8/13.
    assert r["per_class"]["disc"]["dice_dataset"] == pytest.approx(8 / 13)
    assert r["dice_mean"] == pytest.approx(((6 / 8 + 2 / 5) / 2 + (6 / 7 + 1.0) / 2) / 2)
    # Original multi-class metric: mean over images and all classes, background included (§6.2).
    assert r["dice_mean_all_classes_original"] == pytest.approx(np.mean(DICE_A + DICE_B))
    with_bg = SegmentationMeter(num_classes=3, include_background=True)
    with_bg.update(pred, target)
    assert with_bg.compute()["dice_mean"] == pytest.approx(np.mean(DICE_A + DICE_B))
    json.dumps(r, allow_nan=False)


def test_segmentation_meter_rejects_logits_and_bad_labels():
    meter = SegmentationMeter(num_classes=2)
    with pytest.raises(ValueError, match="logits"):
        meter.update(np.zeros((1, 2, 4, 4)), np.zeros((1, 4, 4), int))
    with pytest.raises(ValueError, match="outside"):
        meter.update(np.full((1, 4, 4), 2), np.zeros((1, 4, 4), int))
    ignored = SegmentationMeter(num_classes=2, ignore_index=255)
    target = np.array([[[1, 255], [0, 0]]])
    ignored.update(np.array([[[1, 1], [0, 0]]]), target)  # the 255 pixel is not counted
    assert ignored.compute()["per_class"]["class 1"]["dice"] == pytest.approx(1.0)


def _square(top: int, left: int, size: int = 10, shape=(40, 40)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[top : top + size, left : left + size] = True
    return m


def test_hd95_shifted_square():
    # A 10x10 square shifted 3 px sideways: border distances are 0 (14 px), 1 (4), 2 (4) and 3 (14)
    # in each direction, so the 95th percentile (rank 33.25 of 36) is 3.
    assert hausdorff95(_square(10, 13), _square(10, 10)) == pytest.approx(3.0)
    assert hausdorff95(_square(10, 10), _square(10, 10)) == 0.0
    assert hausdorff95(np.zeros((5, 5)), np.zeros((5, 5))) == 0.0
    assert hausdorff95(_square(1, 1, 2, (5, 5)), np.zeros((5, 5))) is None


def test_hd95_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(3):
        a = np.zeros((24, 24), bool)
        b = np.zeros((24, 24), bool)
        for m in (a, b):
            r, c = rng.integers(2, 14, 2)
            h, w = rng.integers(3, 9, 2)
            m[r : r + h, c : c + w] = True
        got = hausdorff95(a, b)

        def border(m):
            pts = []
            for i, j in zip(*np.nonzero(m)):
                nb = [(i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)]
                if any(not (0 <= x < 24 and 0 <= y < 24) or not m[x, y] for x, y in nb):
                    pts.append((i, j))
            return np.array(pts, float)

        pa, pb = border(a), border(b)
        d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
        expect = max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))
        assert got == pytest.approx(expect)


def test_segmentation_meter_hd95_and_empty_pairs():
    pred = np.stack([_square(10, 13).astype(int), np.zeros((40, 40), int), _square(5, 5).astype(int)])
    target = np.stack([_square(10, 10).astype(int), np.zeros((40, 40), int), np.zeros((40, 40), int)])
    meter = SegmentationMeter(num_classes=2, hd95=True)
    meter.update(pred, target)
    r = meter.compute()
    row = r["per_class"]["class 1"]
    # Image 1: 3 px; image 2: both empty -> 0; image 3: prediction only -> undefined, left out.
    assert row["hd95"] == pytest.approx(1.5)
    assert row["hd95_n_undefined"] == 1
    assert r["hd95_mean"] == pytest.approx(1.5)
    assert r["hd95_unit"] == "pixels"


def test_segmentation_meter_merge_and_state_dict():
    pred, target = _masks()
    whole = SegmentationMeter(3)
    whole.update(pred, target)
    rank0, rank1 = SegmentationMeter(3), SegmentationMeter(3)
    rank0.update(pred[:1], target[:1])
    rank1.update(pred[1:], target[1:])
    rank0.merge(rank1.state_dict())
    assert rank0.compute()["per_class"] == whole.compute()["per_class"]
    restored = SegmentationMeter(3)
    restored.load_state_dict(whole.state_dict())
    assert restored.compute()["dice_mean"] == whole.compute()["dice_mean"]
    assert whole.all_reduce() is whole  # no process group: a no-op
    with pytest.raises(ValueError, match="different settings"):
        SegmentationMeter(4).merge(whole)
    whole.reset()
    empty = whole.compute()
    assert empty["n_images"] == 0 and empty["dice_mean"] is None and "dice_mean" in empty["undefined"]


def test_landmark_meter_by_hand():
    # Two images, two landmarks, (x, y) coordinates at the input resolution.
    true = np.array([[[10.0, 10.0], [20.0, 20.0]], [[5.0, 5.0], [np.nan, np.nan]]])
    pred = np.array([[[13.0, 14.0], [20.0, 21.0]], [[5.0, 13.0], [1.0, 1.0]]])
    # Errors: image 1: 5 (3-4-5), 1; image 2: 8, skipped (NaN truth).
    meter = LandmarkMeter(2, thresholds=(2, 4, 8), landmark_names=["apex", "spur"])
    meter.update(pred, true, scale=np.array([[2.0, 0.5], [1.0, 3.0]]))
    r = meter.compute()
    assert r["n_points_annotated"] == 3 and r["n_points_skipped_nan_truth"] == 1
    assert r["mre_px"] == pytest.approx((5 + 1 + 8) / 3)
    assert r["success_rate_px"] == pytest.approx({"2px": 1 / 3, "4px": 1 / 3, "8px": 1.0})
    assert r["per_landmark"]["apex"]["mre_px"] == pytest.approx(6.5)
    assert r["per_landmark"]["spur"]["mre_px"] == pytest.approx(1.0)
    # Original resolution: image 1, scale (2, .5): offsets (6, 2) -> sqrt(40) and (0, .5) -> .5;
    # image 2, scale (1, 3): (0, 24) -> 24.
    assert r["mre_original_px"] == pytest.approx((np.sqrt(40) + 0.5 + 24) / 3)
    assert r["success_rate_original_px"]["8px"] == pytest.approx(2 / 3)
    json.dumps(r, allow_nan=False)


def test_landmark_meter_missing_predictions_and_scale():
    meter = LandmarkMeter(1)
    meter.update(torch.tensor([[[np.nan, np.nan]], [[1.0, 1.0]]]), torch.tensor([[[0.0, 0.0]], [[1.0, 2.0]]]))
    r = meter.compute()
    assert r["n_missing_predictions"] == 1
    assert r["mre_px"] == pytest.approx(1.0)  # the missing prediction is left out of the mean ...
    assert r["success_rate_px"]["2px"] == pytest.approx(0.5)  # ... and counts as a failure here
    assert r["mre_original_px"] is None and "scale" in r["undefined"]["mre_original_px"]
    other = LandmarkMeter(1)
    other.update(np.array([[[0.0, 3.0]]]), np.array([[[0.0, 0.0]]]))
    meter.merge(other)
    assert meter.compute()["n_images"] == 3
    assert radial_errors(np.array([[3.0, 4.0]]), np.zeros((1, 2)), scale=2.0).tolist() == [[10.0]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    pred, target = _masks()
    seg = SegmentationMeter(3)
    seg.update(pred[rank : rank + 1], target[rank : rank + 1])
    seg.all_reduce()
    lm = LandmarkMeter(1)
    lm.update(np.array([[[float(rank), 0.0]]]), np.zeros((1, 1, 2)))
    lm.all_reduce()
    if rank == 0:
        with open(out, "w") as fh:
            json.dump({"dice": seg.compute()["per_class"], "mre": lm.compute()["mre_px"], "n": lm.n_images}, fh)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.distributed
def test_meters_all_reduce_two_processes(tmp_path):
    out = tmp_path / "rank0.json"
    # fork: the children reuse the parent's imports (spawn would re-import torch, ~4 s each).
    torch.multiprocessing.start_processes(
        _ddp_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True, start_method="fork"
    )
    got = json.loads(out.read_text())
    whole = SegmentationMeter(3)
    whole.update(*_masks())
    assert got["dice"] == json.loads(json.dumps(whole.compute()["per_class"]))
    assert got["n"] == 2 and got["mre"] == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------
# Same numbers as before the move to MONAI (values recorded on seeded inputs)
# --------------------------------------------------------------------------------------------


def _close(got, want, tol):
    if want is None:
        assert got is None
    else:
        assert got == pytest.approx(want, rel=tol, abs=tol)


@pytest.mark.parametrize("case", sorted(golden_values.GOLDEN["dense"]))
def test_same_values_as_recorded_before_monai(case):
    p, t, c, ign = golden_inputs.dense_cases()[case]
    want = golden_values.GOLDEN["dense"][case]
    dice, iou = dice_iou(p, t, c, ign)
    np.testing.assert_allclose(dice, want["dice"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(iou, want["iou"], rtol=0, atol=1e-12)
    for b in range(p.shape[0]):
        for k in range(1, c):
            pred = p[b] == k if ign is None else (p[b] == k) & (t[b] != ign)
            _close(hausdorff95(pred, t[b] == k), want["hd95"][b][k - 1], 1e-5)  # MONAI works in float32
    meter = SegmentationMeter(c, hd95=True, ignore_index=ign)
    meter.update(p[:3], t[:3])
    meter.update(p[3:], t[3:])
    got = golden_inputs.flatten(meter.compute())
    for key, expected in want["meter"].items():
        if key.startswith("undefined."):
            assert key in got
            continue
        _close(got[key], expected, 1e-5 if "hd95" in key else 1e-12)
    assert {k for k in got if k.startswith("undefined.")} == {k for k in want["meter"] if k.startswith("undefined.")}


def test_n_images_predicted_flags_a_class_never_predicted():
    target = np.zeros((3, 6, 6), int)
    target[:, 1:3, 1:3] = 1
    target[0, 4:, 4:] = 2
    pred = np.zeros_like(target)
    pred[:2, 1:3, 1:3] = 1  # class 1 predicted in images 0 and 1, class 2 never
    meter = SegmentationMeter(3)
    meter.update(pred, target)
    rows = meter.compute()["per_class"]
    assert [rows[n]["n_images_predicted"] for n in ("background", "class 1", "class 2")] == [3, 2, 0]
    assert rows["class 2"]["n_images_with_class"] == 1


def test_update_in_chunks_gives_the_same_values(monkeypatch):
    import visionfm.metrics.dense as dense

    p, t, c, ign = golden_inputs.dense_cases()["ignore_index"]
    whole = dense._per_image(p, np.where(t == ign, 0, t), c, t != ign, hd95=True)
    monkeypatch.setattr(dense, "_CHUNK_ELEMENTS", 1)  # one image per chunk
    chunked = dense._per_image(p, np.where(t == ign, 0, t), c, t != ign, hd95=True)
    for key in whole:
        np.testing.assert_array_equal(whole[key], chunked[key])
