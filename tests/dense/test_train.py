"""End-to-end: ``visionfm train-seg`` / ``train-landmark`` on synthetic data learn, and write their outputs.

A random vit_tiny encoder at 64 px; the UNETR head's image branch and the 4 token levels are
enough for the synthetic vessel trees and UBM landmarks to be learned in a few epochs.
"""

import json

import numpy as np
import pytest
import torch

from visionfm.cli.main import main
from visionfm.data.images import load_mask
from visionfm.data.layouts import LandmarkDataset, SegmentationDataset
from visionfm.data.synth import generate
from visionfm.metrics.dense import SegmentationMeter, radial_errors

COMMON = ["--arch", "vit_tiny", "--input_size", "64", "--pretrained_weights", "random", "--num_workers", "0",
          "--batch_size_per_gpu", "8", "--n_overlays", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense_synth")
    generate("segmentation", root / "seg2", num=24, img_size=64, seed=0, num_classes=2)
    generate("segmentation", root / "seg3", num=8, img_size=80, seed=1, num_classes=3)
    generate("landmark", root / "lmk", num=24, img_size=64, seed=0, landmark_format="points")
    return root


def _seg_flags(data, out, name):
    seg = str(data / "seg2" / "VesselSegmentation")
    return ["train-seg", "--name", name, "--output_dir", str(out), "--data_path", seg, "--num_labels", "1",
            "--epochs", "10", "--lr", "3e-3", "--no_augment", *COMMON]


def _model_tensors(run, stem="checkpoint_best"):
    """The decoder weights a run saved, read straight from its safetensors file."""
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(run / f"{stem}.safetensors")).items() if k.startswith("model.")}


@pytest.fixture(scope="module")
def unetr_run(data, tmp_path_factory):
    """One 10-epoch UNETR vessel run, shared by the checks below."""
    out = tmp_path_factory.mktemp("unetr_seg")
    assert main(_seg_flags(data, out, "run")) == 0
    return out / "run"


@pytest.mark.xdist_group("unetr_seg")  # one worker builds the shared run
def test_seg_unetr_beats_trivial_baselines(data, unetr_run):
    seg = str(data / "seg2" / "VesselSegmentation")
    run = unetr_run
    metrics = json.loads((run / "metrics.json").read_text())
    dice = metrics["dice_mean"]
    # Trivial baselines on the same test images: all vessel, all background (vessel Dice 0).
    test = SegmentationDataset(seg, "test", 1)
    masks = np.stack([test[i][1].numpy() for i in range(len(test))])
    base = SegmentationMeter(2, hd95=False)
    base.update(np.ones_like(masks), masks)
    all_vessel = base.compute()["dice_mean"]
    base.reset()
    base.update(np.zeros_like(masks), masks)
    all_background = base.compute()["dice_mean"]
    print(f"vessel Dice {dice:.3f} vs all-vessel {all_vessel:.3f} / all-background {all_background:.3f}")
    assert dice > max(all_vessel, all_background) + 0.4, (dice, all_vessel, all_background)
    assert metrics["hd95_mean"] is not None and metrics["background_included"] is False
    # Outputs: one log line per epoch (+ run info + final), checkpoints, predictions, overlays, report.
    lines = [json.loads(x) for x in (run / "log.txt").read_text().splitlines()]
    epochs = [x for x in lines if "epoch" in x and "train_loss" in x]
    assert len(epochs) == 10 and epochs[1]["lr"] < epochs[0]["lr"]  # the schedule steps
    for name in ("checkpoint_best.safetensors", "checkpoint_best.json", "checkpoint_last.safetensors", "report.html"):
        assert (run / name).is_file(), name
    preds = sorted((run / "predictions").rglob("*.png"))
    assert len(preds) == len(test)
    assert set(np.unique(load_mask(preds[0])).tolist()) <= {0, 1} and load_mask(preds[0]).shape == (64, 64)
    assert len(list((run / "overlays").glob("*.png"))) == 2
    assert "data:image/png;base64" in (run / "report.html").read_text()


@pytest.mark.xdist_group("unetr_seg")
def test_seg_unetr_uses_the_encoder_features(data, unetr_run, tmp_path, monkeypatch):
    """Control: the same run with every encoder token zeroed. The UNETR head still sees the image
    through its full-resolution branch (a ~9 px receptive field), so it learns something, but the
    token levels carry the context: without them the vessel Dice is clearly lower (0.85 vs 0.65)."""
    from visionfm.models.encoder import VisionFMEncoder

    real = VisionFMEncoder.forward_intermediates_tokens
    calls = []

    def zeroed(self, *args, **kwargs):
        calls.append(1)
        return [torch.zeros_like(t) for t in real(self, *args, **kwargs)]

    monkeypatch.setattr(VisionFMEncoder, "forward_intermediates_tokens", zeroed)
    assert main(_seg_flags(data, tmp_path, "zero")) == 0
    assert calls, "the control must zero the features the decoder is trained on"
    with_features = json.loads((unetr_run / "metrics.json").read_text())["dice_mean"]
    without = json.loads((tmp_path / "zero" / "metrics.json").read_text())["dice_mean"]
    print(f"vessel Dice with encoder features {with_features:.3f}, with zeroed features {without:.3f}")
    assert with_features > without + 0.1, (with_features, without)


def test_landmark_beats_mean_position(data, tmp_path):
    lmk = str(data / "lmk" / "LandmarkDetection")
    rc = main(["train-landmark", "--name", "run", "--output_dir", str(tmp_path), "--data_path", lmk,
               "--epochs", "10", "--lr", "3e-3", "--no_augment", *COMMON])
    assert rc == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    train = LandmarkDataset(lmk, "training", 3)
    test = LandmarkDataset(lmk, "test", 3)
    mean_pos = np.stack([train[i][1].numpy() for i in range(len(train))]).mean(0)
    truth = np.stack([test[i][1].numpy() for i in range(len(test))])
    baseline = float(np.nanmean(radial_errors(np.broadcast_to(mean_pos, truth.shape), truth)))
    mre = metrics["mre_px"]
    print(f"MRE {mre:.2f} px vs mean-position baseline {baseline:.2f} px")
    assert mre < 0.7 * baseline, (mre, baseline)  # e.g. 1.47 vs 2.68 px
    assert metrics["mre_original_px"] == pytest.approx(mre)  # 64 px images at 64 px input
    assert set(metrics["success_rate_px"]) == {"2px", "4px", "8px"}
    preds = json.loads((tmp_path / "run" / "predictions.json").read_text())["images"]
    assert len(preds) == len(test)
    assert len(list((tmp_path / "run" / "overlays").glob("*.png"))) == 2


def test_live_augmented_multiclass_linear_head(data, tmp_path):
    seg = str(data / "seg3" / "VesselSegmentation")
    rc = main(["train-seg", "--name", "run", "--output_dir", str(tmp_path), "--data_path", seg, "--num_labels", "3",
               "--epochs", "2", "--head_type", "linear", "--scheduler", "step", "--class_names", "bg", "vessel",
               "disc", *COMMON])
    assert rc == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"bg", "vessel", "disc"}
    assert "hd95_mean" not in metrics  # HD95 only for binary runs
    info = json.loads((run / "checkpoint_last.json").read_text())
    assert info["augment"] is True and info["cached_features"] is False and info["head_type"] == "linear"
    assert len(sorted((run / "predictions").rglob("*.png"))) == 8
    assert load_mask(sorted((run / "predictions").rglob("*.png"))[0]).shape == (80, 80)  # original size
    # --load_from initialises the head from a previous run's checkpoint (at another input size too).
    rc = main(["train-seg", "--name", "again", "--output_dir", str(tmp_path), "--data_path", seg, "--num_labels",
               "3", "--epochs", "1", "--head_type", "linear", "--load_from", str(run / "checkpoint_best"),
               "--no_augment", "--input_size", "80", *COMMON[:2], *COMMON[4:]])
    assert rc == 0
    # With learning rate 0 (and a head without BatchNorm) one epoch changes nothing: the new run's
    # selected weights are exactly the loaded ones, and its test metrics those of the first run.
    rc = main(["train-seg", "--name", "loaded", "--output_dir", str(tmp_path), "--data_path", seg, "--num_labels",
               "3", "--epochs", "1", "--lr", "0", "--head_type", "linear", "--class_names", "bg", "vessel", "disc",
               "--load_from", str(run / "checkpoint_best"), *COMMON])
    assert rc == 0
    loaded, source = _model_tensors(tmp_path / "loaded"), _model_tensors(run)
    assert loaded.keys() == source.keys() and loaded
    for k in source:
        assert torch.equal(loaded[k], source[k]), k
    again = json.loads((tmp_path / "loaded" / "metrics.json").read_text())
    assert again["dice_mean"] == pytest.approx(metrics["dice_mean"], abs=1e-9)
    assert again["per_class"] == metrics["per_class"]


def test_bad_input_size_is_a_clear_error(data, tmp_path, capsys):
    seg = str(data / "seg2" / "VesselSegmentation")
    rc = main(["train-seg", "--name", "x", "--output_dir", str(tmp_path), "--data_path", seg, "--num_labels", "1",
               "--epochs", "1", *COMMON[:2], "--input_size", "72", *COMMON[4:]])
    assert rc == 2
    assert "multiple of 16" in capsys.readouterr().err
