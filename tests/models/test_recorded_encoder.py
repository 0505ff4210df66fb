"""What weights files record is what a command uses: arch, patch size and width are read from the file when
``--arch``/``--patch_size``/``--embed_dim`` are not given (checked when given), and the modality whose
statistics normalise the images comes from ``--modality``, else from the file's record, else the original
script's default (issue 12, "Infer what files record")."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from visionfm.cli.main import main
from visionfm.data.features import FeatureStore
from visionfm.data.synth import generate

SIZE = ["--input_size", "32", "--num_workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An official-layout ViT-tiny .pth, its safetensors export recording OCT, and a 4-image data set."""
    from visionfm.models import build_encoder
    from visionfm.models.export import export_encoder

    root = tmp_path_factory.mktemp("recorded")
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny", patch_size=16, img_size=224)
    pth = root / "tiny.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in enc.state_dict().items()}}, pth)
    export = root / "tiny_oct.safetensors"
    export_encoder(pth, export, modality="OCT")
    generate("single_cls", root / "data", num=4, img_size=32, seed=0)
    return {"root": root, "pth": pth, "export": export, "data": root / "data" / "FundusClassification"}


def _store_meta(dst: Path) -> dict:
    (meta,) = [FeatureStore.read_meta(p.parent) for p in dst.rglob("test/pass_0/meta.json")]
    return meta


def test_extract_records_what_the_export_records(files, tmp_path, caplog):
    dst = tmp_path / "feats"
    assert main(["extract", "--pretrained_weights", str(files["export"]), "--data_path", str(files["data"]),
                 "--dst_root", str(dst), "--epochs", "1", *SIZE]) == 0
    meta = _store_meta(dst)
    assert (meta["arch"], meta["patch_size"], meta["embed_dim"], meta["modality"]) == ("vit_tiny", 16, 192, "OCT")
    # an explicit --modality wins (the data's modality is the user's call), with a warning naming the record
    dst2 = tmp_path / "feats_fundus"
    with caplog.at_level(logging.WARNING, logger="visionfm.features"):
        assert main(["extract", "--pretrained_weights", str(files["export"]), "--data_path", str(files["data"]),
                     "--dst_root", str(dst2), "--epochs", "1", "--modality", "Fundus", *SIZE]) == 0
    assert _store_meta(dst2)["modality"] == "Fundus"
    assert any("records OCT" in r.getMessage() for r in caplog.records)
    # a .pth records no modality: the original default
    dst3 = tmp_path / "feats_pth"
    assert main(["extract", "--pretrained_weights", str(files["pth"]), "--data_path", str(files["data"]),
                 "--dst_root", str(dst3), "--epochs", "1", *SIZE]) == 0
    assert (_store_meta(dst3)["modality"], _store_meta(dst3)["arch"]) == ("Fundus", "vit_tiny")


def test_train_cls_from_a_store_reads_its_modality(files, tmp_path):
    dst = tmp_path / "feats"
    assert main(["extract", "--pretrained_weights", str(files["export"]), "--data_path", str(files["data"]),
                 "--dst_root", str(dst), "--epochs", "1", *SIZE]) == 0
    assert main(["train-cls", "--name", "s", "--features", str(dst), "--output_dir", str(tmp_path), "--epochs", "1",
                 "--report_n_boot", "0", "--device", "cpu"]) == 0
    assert (tmp_path / "s" / "s_OCT_results.json").is_file()
    cfg = json.loads((tmp_path / "s" / "model" / "config.json").read_text())
    assert (cfg["modality"], cfg["encoder"]["arch"]) == ("OCT", "vit_tiny")


def test_model_folder_modality_and_the_landmark_default(files, tmp_path):
    from visionfm import load_encoder
    from visionfm.engine.features import resolve_modality
    from visionfm.models.heads.cls import LinearHead
    from visionfm.packaging import model_folder_from_training

    enc = load_encoder(files["pth"], None, "teacher", None, 32)
    folder = tmp_path / "model"
    model_folder_from_training(folder, encoder=enc, head=LinearHead(192, 2), task="classification",
                               task_kind="multiclass", modality="SlitLamp", input_size=32, head_type="linear",
                               head_args={"embed_dim": 192, "num_classes": 2},
                               features={"type": "pooled", "n_last_blocks": 1, "avgpool": 0},
                               class_names=["a", "b"], weights_source=str(files["pth"]))
    assert resolve_modality(None, folder) == "SlitLamp"
    assert resolve_modality(None, files["export"], "UBM") == "OCT"
    assert resolve_modality(None, files["pth"], "UBM") == "UBM"  # train_landmark_decoder.py's default
    assert resolve_modality("Fundus", folder) == "Fundus"
    rep = load_encoder(folder, None, "teacher", None, 32).load_report
    assert (rep.arch, rep.patch_size, rep.modality) == ("vit_tiny", 16, "SlitLamp")


def test_random_weights_default_to_vit_base_16():
    from visionfm import load_encoder

    rep = load_encoder("random", None, "teacher", None, 32).load_report
    assert (rep.arch, rep.patch_size) == ("vit_base", 16)


def test_train_seg_without_arch_records_the_file_arch(files, tmp_path):
    seg = tmp_path / "seg"
    generate("segmentation", seg, num=2, img_size=32, seed=0, num_classes=2)
    assert main(["train-seg", "--name", "s", "--pretrained_weights", str(files["export"]), "--data_path",
                 str(seg / "VesselSegmentation"), "--output_dir", str(tmp_path), "--epochs", "1", "--num_labels", "1",
                 "--n_overlays", "0", "--batch_size_per_gpu", "2", *SIZE]) == 0
    cfg = json.loads((tmp_path / "s" / "model" / "config.json").read_text())
    assert (cfg["encoder"]["arch"], cfg["encoder"]["patch_size"], cfg["modality"]) == ("vit_tiny", 16, "OCT")
    best = json.loads((tmp_path / "s" / "checkpoint_best.json").read_text())
    ident = best["identity"]
    assert (ident["arch"], ident["patch_size"], ident["modality"]) == ("vit_tiny", 16, "OCT")


def test_forecast_embed_dim_is_a_check(files, tmp_path, capsys):
    data = tmp_path / "fc"
    generate("forecasting", data, num=4, img_size=32, seed=0)
    (sub,) = [p for p in data.iterdir() if p.is_dir()]
    capsys.readouterr()
    assert main(["train-forecast", "--data_path", str(sub), "--pretrained_weights", str(files["pth"]),
                 "--output_dir", str(tmp_path / "out"), "--embed_dim", "768", *SIZE]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--embed_dim 768" in err[0] and "192" in err[0] and "tiny.pth" in err[0], err
