"""``visionfm predict``: a train-cls run's model folder, a real fundus photo (scikit-image's CC0
``retina.jpg``), DICOM inputs (MONOCHROME2 uint16 with rescale/window, MONOCHROME1, RGB, multi-frame)
and a segmentation model folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import write_dicom
from visionfm.cli.main import main
from visionfm.data.synth import generate
from visionfm.inference.io import read_image
from visionfm.packaging import model_folder_from_training

SIZE = 32


@pytest.fixture(scope="module")
def cls_model(tmp_path_factory, encoder):
    from visionfm.models.heads import ClsHead

    head = ClsHead(192 * 4, 3).eval()
    return model_folder_from_training(
        tmp_path_factory.mktemp("cls") / "model", encoder=encoder, head=head, task="classification",
        task_kind="multiclass", modality="Fundus", input_size=SIZE,
        features={"type": "pooled", "n_last_blocks": 4, "avgpool": 0}, head_type="cls",
        head_args={"embed_dim": 192 * 4, "num_classes": 3}, class_names=["normal", "dr", "amd"])


def _retina(tmp_path: Path) -> Path:
    import skimage.data

    bundled = Path(skimage.data.__file__).parent / "retina.jpg"
    if bundled.is_file():
        return bundled
    path = tmp_path / "retina.jpg"
    Image.fromarray(skimage.data.retina()).save(path, quality=95)
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_train_cls_model_folder_reproduces_the_run(tmp_path):
    generate("single_cls", tmp_path / "data", num=16, img_size=SIZE, seed=0)
    data = tmp_path / "data" / "FundusClassification"
    out = tmp_path / "runs"
    assert main(["train-cls", "--name", "run", "--pretrained_weights", "random", "--data_path", str(data),
                 "--num_labels", "5", "--output_dir", str(out), "--arch", "vit_tiny", "--input_size", str(SIZE),
                 "--modality", "Fundus", "--batch_size_per_gpu", "16", "--num_workers", "0", "--epochs", "3",
                 "--device", "cpu", "--report_n_boot", "0"]) == 0
    folder = out / "run" / "model"
    for name in ("config.json", "model.safetensors", "README.md", "metrics.json"):
        assert (folder / name).is_file(), name
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["task"] == "classification" and cfg["task_kind"] == "multiclass" and len(cfg["class_names"]) == 5
    assert cfg["preprocess"]["interpolation"] == "bicubic" and "accuracy" in cfg["metrics"]
    pred_dir = tmp_path / "pred"
    test_dir = data / "dataset_A" / "test"
    assert main(["predict", "--model", str(folder), "--input", str(test_dir), "--output", str(pred_dir),
                 "--device", "cpu", "--no_attention"]) == 0
    preds = json.loads((pred_dir / "predictions.json").read_text())["predictions"]
    assert len(preds) == len(list(test_dir.glob("*.png"))) == len(_rows(pred_dir / "predictions.csv"))
    # the packaged model gives the run's own test probabilities (same encoder, preprocessing, head)
    run = json.loads((out / "run" / "run_Fundus_results.json").read_text())
    by_name = {Path(k).name: v["pred"] for k, v in run.items()}
    for r in preds:
        got = [r["probabilities"][n] for n in cfg["class_names"]]
        assert np.allclose(got, by_name[r["image"]], atol=1e-4), (r["image"], got, by_name[r["image"]])


def test_predict_on_a_real_fundus_photo(tmp_path, cls_model):
    retina = _retina(tmp_path)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(cls_model), "--input", str(retina), "--output", str(out),
                 "--device", "cpu"]) == 0
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 1 and rows[0]["prediction"] in ("normal", "dr", "amd")
    assert abs(sum(float(rows[0][f"prob_{n}"]) for n in ("normal", "dr", "amd")) - 1) < 1e-5
    record = json.loads((out / "predictions.json").read_text())["predictions"][0]
    assert (record["height"], record["width"]) == (1411, 1411)
    heat = np.asarray(Image.open(out / record["attention_map"]).convert("RGB")).astype(np.float64)
    photo = np.asarray(Image.open(retina).convert("RGB").resize(heat.shape[1::-1]), dtype=np.float64)
    assert heat.std() > 10 and np.abs(heat - photo).mean() > 10  # a heat map, not blank, not the bare photo
    assert len(np.unique(heat.reshape(-1, 3)[:, 2])) > 20  # varies over the image




def test_dicom_readers(tmp_path):
    ramp = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (48, 1))  # 48 x 64, 0..4032
    # MONOCHROME2 uint16, rescale to -1000..3032 and a window [0, 2048)
    mono2 = write_dicom(tmp_path / "mono2.dcm", ramp, "MONOCHROME2", RescaleSlope="1", RescaleIntercept="-1000",
                         WindowCenter="1024", WindowWidth="2048", BitsStored=12)
    img = read_image(mono2)
    a = np.asarray(img)
    assert img.mode == "RGB" and a.shape == (48, 64, 3) and (a[..., 0] == a[..., 1]).all()
    vals = ramp[0].astype(float) - 1000
    assert a[0, vals <= -1].max() == 0 and a[0, vals >= 2048].min() == 255
    mid = np.argmin(np.abs(vals - 1024))
    assert abs(int(a[0, mid, 0]) - 128) <= 3
    # MONOCHROME2 without a window: by BitsStored (12 bits: 4032 / 4095); MONOCHROME1 is inverted
    plain = np.asarray(read_image(write_dicom(tmp_path / "plain.dcm", ramp, "MONOCHROME2", BitsStored=12)))
    inv = np.asarray(read_image(write_dicom(tmp_path / "inv.dcm", ramp, "MONOCHROME1", BitsStored=12)))
    assert plain[0, 0, 0] == 0 and plain[0, -1, 0] == round(4032 * 255 / 4095) and (inv == 255 - plain).all()
    # RGB uint8 keeps its colours
    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[10:20, :, 2] = 200, np.arange(30, dtype=np.uint8)[None] * 8, 90
    got = np.asarray(read_image(write_dicom(tmp_path / "rgb.dcm", rgb, "RGB")))
    assert (got == rgb).all()
    # multi-frame: the first frame, with a warning; a file without extension is found by its magic
    stack = np.stack([ramp, ramp[:, ::-1].copy()]).astype(np.uint16)
    mf = write_dicom(tmp_path / "multiframe", stack, "MONOCHROME2", frames=2, BitsStored=12)
    with pytest.warns(UserWarning, match="2 frames"):
        first = np.asarray(read_image(mf))
    assert (first == plain).all()
    # not a DICOM / corrupt
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    from visionfm.errors import DataFormatError

    with pytest.raises(DataFormatError, match="bad.dcm"):
        read_image(tmp_path / "bad.dcm")


def test_predict_on_dicom_files(tmp_path, cls_model):
    src = tmp_path / "dicoms"
    src.mkdir()
    ramp = np.tile(np.arange(0, 65536, 1024, dtype=np.uint16), (64, 1))
    write_dicom(src / "grey.dcm", ramp, "MONOCHROME2")
    rgb = np.asarray(Image.open(_retina(tmp_path)).convert("RGB").resize((96, 96)))
    (src / "sub").mkdir()
    write_dicom(src / "sub" / "colour.dcm", rgb, "RGB")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(cls_model), "--input", str(src), "--output", str(out),
                 "--device", "cpu"]) == 0
    rows = _rows(out / "predictions.csv")
    assert [r["image"] for r in rows] == ["grey.dcm", "sub/colour.dcm"]
    assert [(r["height"], r["width"]) for r in rows] == [("64", "64"), ("96", "96")]
    for r in rows:
        png = np.asarray(Image.open(out / r["attention_map"]))
        assert png.std() > 5
    assert (out / "attention" / "sub" / "colour.dcm.png").is_file()


def test_predict_segmentation_and_errors(tmp_path, encoder, cls_model, capsys):
    from visionfm.models.heads.unetr import UnetrHead

    folder = model_folder_from_training(
        tmp_path / "seg", encoder=encoder, head=UnetrHead(192, 1).eval(), task="segmentation", modality="Fundus",
        input_size=SIZE, interpolation="bilinear", features={"type": "dense", "block_ids": [3, 5, 7, 11]},
        head_type="unetr", head_args={"embed_dim": 192, "num_classes": 1, "patch_size": 16},
        class_names=["background", "vessel"])
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray((np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)).save(imgs / "a.png")
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(imgs / "b.tif")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(folder), "--input", str(imgs), "--output", str(out),
                 "--device", "cpu"]) == 0
    rows = _rows(out / "predictions.csv")
    assert [r["image"] for r in rows] == ["a.png", "b.tif"]
    for r, shape in zip(rows, [(50, 70), (40, 40)]):
        mask = np.asarray(Image.open(out / r["mask"]))
        assert mask.shape == shape and set(np.unique(mask).tolist()) <= {0, 1}
        assert abs(float(r["fraction_background"]) + float(r["fraction_vessel"]) - 1) < 1e-6
        assert (out / r["overlay"]).is_file() and (out / r["attention_map"]).is_file()
    # clear errors: --days on a non-forecasting model, a missing input, a broken model folder
    capsys.readouterr()
    assert main(["predict", "--model", str(cls_model), "--input", str(imgs), "--output", str(out),
                 "--days", "30"]) == 2
    assert "only applies to forecasting" in capsys.readouterr().err
    assert main(["predict", "--model", str(cls_model), "--input", str(tmp_path / "nothing"),
                 "--output", str(out)]) == 2
    assert "nothing" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "imgs"), "--input", str(imgs), "--output", str(out)]) == 2
    assert "config.json is missing" in capsys.readouterr().err
