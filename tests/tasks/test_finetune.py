"""``visionfm finetune`` / ``evaluate`` on a tiny learnable ImageNet-layout data set."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.tasks.test_features import run_cli

COLOURS = {"a_red": (200, 40, 40), "b_green": (40, 200, 40), "c_blue": (40, 40, 200)}
COMMON = ["--arch", "vit_tiny", "--input_size", "32", "--patch_size", "16", "--pretrained_weights", "random",
          "--batch_size_per_gpu", "8", "--num_workers", "0", "--device", "cpu", "--report_n_boot", "0"]


def make_imagefolder(root, classes=("a_red", "b_green", "c_blue"), n=(10, 4, 4), skip=None, seed=0):
    """``<root>/{train,val,test}/<class>/*.png``; class = dominant colour (the named colours, else one of a
    spread of hues by the class's position). ``skip``: (split, class) left out."""
    rng = np.random.default_rng(seed)
    hues = {c: COLOURS.get(c, (40 + 180 * (i % 2), 40 + 90 * (i % 3), 220 - 45 * i % 180))
            for i, c in enumerate(classes)}
    for split, k in zip(("train", "val", "test"), n):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            if skip and (split, c) in skip:
                continue
            for i in range(k):
                arr = np.clip(np.array(hues[c]) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


def test_finetune_then_evaluate_reproduces_test_metrics_and_beats_probe(tmp_path):
    data = make_imagefolder(tmp_path / "data")
    out = tmp_path / "out"
    assert run_cli("finetune", "--name", "ft", "--data_path", str(data), "--output_dir", str(out), "--epochs", "4",
                   "--lr", "0.05", "--warmup_epochs", "1", "--drop_path", "0.1", "--layer_decay", "0.75", *COMMON) == 0
    run = out / "ft"
    best = json.loads((run / "checkpoint_best.json").read_text())
    assert best["class_names"] == ["a_red", "b_green", "c_blue"] and best["selection_key"] == "auroc"
    ft_test = best["test_metrics"]
    logs = [json.loads(x) for x in (run / "log.txt").read_text().splitlines()]
    assert sum("val_auroc" in x for x in logs) == 4
    assert run_cli("evaluate", "--name", "ev", "--load_from", str(run / "checkpoint_best.safetensors"),
                   "--data_path", str(data), "--output_dir", str(out), "--num_workers", "0", "--device", "cpu",
                   "--report_n_boot", "0") == 0
    ev = json.loads((out / "ev" / "evaluate.json").read_text())["metrics"]
    assert ev == ft_test
    assert (out / "ev" / "report" / "report.html").is_file()
    # the selected model as a model folder: same test probabilities from the images, and evaluate --model
    from visionfm.inference.io import read_image
    from visionfm.packaging import from_pretrained

    folder = run / "model"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["encoder"]["frozen"] is False and cfg["class_names"] == ["a_red", "b_green", "c_blue"]
    probs = np.load(run / "report" / "probs.npy")
    files = sorted((data / "test").glob("*/*.png"))  # ImageFolder order: class, then file name
    pred = from_pretrained(folder).predict([read_image(f) for f in files])
    assert np.abs(pred["probabilities"] - probs).max() < 1e-4
    assert run_cli("evaluate", "--name", "evm", "--model", str(folder), "--data_path", str(data),
                   "--output_dir", str(out), "--num_workers", "0", "--device", "cpu", "--report_n_boot", "0") == 0
    evm = json.loads((out / "evm" / "evaluate.json").read_text())["metrics"]
    assert evm.keys() == ft_test.keys() and all(abs(evm[k] - ft_test[k]) < 1e-6 for k in ft_test)
    # the frozen linear probe on the same data and (random) encoder
    assert run_cli("train-cls", "--name", "probe", "--dataset_format", "ImageNet", "--head", "linear",
                   "--data_path", str(data), "--num_labels", "3", "--output_dir", str(out), "--epochs", "30",
                   "--lr", "0.05", *COMMON) == 0
    probe = json.loads((out / "probe" / "report" / "metrics.json").read_text())
    print("fine-tune test", ft_test, "linear probe test", {k: probe.get(k) for k in ("accuracy", "auroc_macro")})
    assert ft_test["auroc_macro"] >= probe["auroc_macro"] - 0.05


def test_binary_finetune_with_class_absent_from_val(tmp_path):
    data = make_imagefolder(tmp_path / "data", classes=("a_red", "b_green"), n=(8, 3, 3), skip={("val", "b_green")})
    out = tmp_path / "out"
    for extra in ([], ["--num_labels", "1"]):
        name = "bin1" if extra else "bin2"
        assert run_cli("finetune", "--name", name, "--data_path", str(data), "--output_dir", str(out),
                       "--epochs", "2", "--lr", "0.02", *extra, *COMMON) == 0
        best = json.loads((out / name / "checkpoint_best.json").read_text())
        assert best["num_outputs"] == (1 if extra else 2)
        assert best["test_metrics"]["auroc"] is not None  # test has both classes


def test_mixup_randaug_and_presets(tmp_path):
    from visionfm.data.layouts import ImageFolderDataset
    from visionfm.engine.trainer import warmup_cosine as lr_at
    from visionfm.tasks.finetune import resolve_classes

    classes = resolve_classes(tmp_path, None, "JSIEC")
    assert classes[1] == "20.Massive hard exudates" and len(classes) == 39
    assert resolve_classes(tmp_path, None, "IDRiD").index("cmoderateDR") == 2
    assert resolve_classes(tmp_path, None, "aptos2019")[4] == "eproliferativedr"
    assert resolve_classes(tmp_path, "c_blue,a_red,b_green", None) == ["c_blue", "a_red", "b_green"]
    assert lr_at(0, 100, 10, 1.0, 0.0) == 0.0 and lr_at(10, 100, 10, 1.0, 0.0) == 1.0
    assert abs(lr_at(100, 100, 10, 1.0, 0.1) - 0.1) < 1e-12
    data = make_imagefolder(tmp_path / "data", n=(6, 2, 2))
    ds = ImageFolderDataset(data, "train", class_order=["c_blue", "a_red", "b_green"])
    assert ds.class_to_idx["c_blue"] == 0
    out = tmp_path / "out"
    assert run_cli("finetune", "--name", "mix", "--data_path", str(data), "--output_dir", str(out), "--epochs", "1",
                   "--mixup", "0.8", "--cutmix", "1.0", "--randaug", "rand-m9-mstd0.5-inc1", "--reprob", "0.25",
                   "--accum_iter", "2", "--class_order", "c_blue,a_red,b_green", *COMMON) == 0
    best = json.loads((out / "mix" / "checkpoint_best.json").read_text())
    assert best["class_names"] == ["c_blue", "a_red", "b_green"]
    with pytest.raises(SystemExit):
        run_cli("finetune", "--name", "x", "--data_path", str(data), "--class_order_preset")
