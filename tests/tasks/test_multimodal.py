"""train-multi-cls: the visionfm13 loss, pooled stores of two modalities, per-subject fusion."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tasks.test_features import run_cli
from visionfm.data.features import FeatureStore

FAST = ["--batch_size_per_gpu", "32", "--report_n_boot", "0", "--device", "cpu", "--num_workers", "0"]


def test_visionfm13_loss_hand_computed():
    from visionfm.tasks.multilabel import visionfm13_loss

    logits = torch.zeros(2, 13)
    logits[0, 2] = math.log(3.0)  # grade softmax row 0: [1,1,3,1,1]/7
    logits[:, 9] = 1.0  # hypertensive retinopathy logit 1 for both rows
    target = torch.zeros(2, 13)
    target[0, 2] = 1.0  # row 0: grade DR-2; row 1: ungraded (first five all zero)
    target[0, 9] = 1.0  # row 0 positive for column 9, row 1 negative
    ce = (-math.log(3 / 7) + 0.0) / 2  # the ungraded row contributes 0 but counts in the mean
    bce0 = math.log(2.0)  # BCE(logit 0, any target) = log 2 for the 7 other findings
    bce9 = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2
    want = 5 * ce + 7 * bce0 + 5 * bce9
    assert float(visionfm13_loss(logits, target)) == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError):
        visionfm13_loss(torch.zeros(2, 12), torch.zeros(2, 12))


def test_visionfm13_metrics_whole_set_and_probabilities():
    from visionfm.tasks.multilabel import visionfm13_metrics, visionfm13_probabilities

    rng = np.random.default_rng(0)
    y = np.zeros((40, 13))
    grades = rng.integers(0, 5, 40)
    y[np.arange(40), grades] = 1
    y[:5, :5] = 0  # ungraded rows are left out of DR grading
    y[:, 5] = (y[:, 1:5].sum(1) > 0)
    y[:, 6:] = rng.integers(0, 2, (40, 7))
    logits = torch.as_tensor(np.where(y > 0, 3.0, -3.0))
    p = visionfm13_probabilities(logits)
    assert np.allclose(p[:, :5].sum(1), 1) and p.min() >= 0 and p.max() <= 1
    m = visionfm13_metrics(y, p)
    assert m["tasks"]["dr_grading"]["n"] == 35
    assert m["selection"] == pytest.approx(1.0) and m["auroc_mean"] == pytest.approx(1.0)


# -- pooled: real synthetic Fundus + OCT images through `visionfm extract` ---------------------------------


@pytest.fixture(scope="module")
def multi_stores(tmp_path_factory):
    from visionfm.data.synth import generate

    root = tmp_path_factory.mktemp("mm")
    generate("multi_cls", root / "data", num=96, img_size=48, seed=0)
    for mod in ("Fundus", "OCT"):
        assert run_cli("extract", "--pretrained_weights", "random", "--arch", "vit_tiny", "--input_size", "48",
                       "--modality", mod, "--data_path", str(root / "data" / f"{mod}ClassificationMulti"),
                       "--dst_root", str(root / "feats" / f"{mod}ClassificationMulti"), "--epochs", "1",
                       "--num_workers", "0", "--device", "cpu", "--batch_size_per_gpu", "64") == 0
    return root


def test_pooled_visionfm13_beats_chance(multi_stores):
    out = multi_stores / "out"
    assert run_cli("train-multi-cls", "--name", "pooled", "--data_path", str(multi_stores / "feats"),
                   "--datasets", "FundusClassificationMulti", "OCTClassificationMulti", "--embed_dim", "192",
                   "--epochs", "30", "--lr", "0.1", "--output_dir", str(out), *FAST) == 0
    run = out / "pooled"
    summary = json.loads((run / "report" / "metrics.json").read_text())
    tasks = summary["tasks"]
    assert set(tasks) == {"dr_grading", "dr", "glaucoma", "amd", "cataract", "hypertensive_retinopathy", "rvo",
                          "myopia", "retinal_detachment"}
    visible = [tasks[k]["auroc"] for k in ("cataract", "myopia")]
    assert np.mean(visible) >= 0.65, tasks
    for t in ("dr_grading", "cataract"):
        assert (run / "report" / t / "report.html").is_file()
    log = [json.loads(x) for x in (run / "log.txt").read_text().splitlines()]
    assert sum("val_selection" in x for x in log) == 30 and "val_f1_cataract" in log[-2]
    res = json.loads((run / "pooled_results.json").read_text())
    assert len(res) == 192 and len(next(iter(res.values()))["pred"]) == 13  # 96 Fundus + 96 OCT test images
    best = json.loads((run / "checkpoint_best.json").read_text())
    assert best["fusion"] == "pooled" and best["modalities"] == ["Fundus", "OCT"]
    assert not (run / "model").exists()  # two modalities (two normalisations): no single-image model folder


def test_pooled_single_encoder_run_writes_a_model_folder(multi_stores):
    from visionfm.inference.io import read_image
    from visionfm.packaging import from_pretrained

    out = multi_stores / "out"
    assert run_cli("train-multi-cls", "--name", "fundus", "--data_path", str(multi_stores / "feats"),
                   "--datasets", "FundusClassificationMulti", "--embed_dim", "192", "--epochs", "3", "--lr", "0.1",
                   "--output_dir", str(out), *FAST) == 0
    run = out / "fundus"
    model = from_pretrained(run / "model")
    assert model.config["task_kind"] == "visionfm13" and model.config["preprocess"]["interpolation"] == "bilinear"
    res = json.loads((run / "fundus_results.json").read_text())
    data = multi_stores / "data" / "FundusClassificationMulti"
    ids = sorted(res)[:16]
    imgs = [read_image(next(data.rglob(i.split("/", 1)[1]))) for i in ids]
    pred = model.predict(imgs)["probabilities"]
    assert np.abs(pred - np.array([res[i]["pred"] for i in ids])).max() < 1e-4
    assert np.allclose(pred[:, :5].sum(1), 1.0, atol=1e-5)


def test_embed_dim_mismatch_is_one_clear_error(multi_stores, capsys):
    """--embed_dim is read from the stores; given by hand (the original's ViT-B 768), it is checked."""
    rc = run_cli("train-multi-cls", "--name", "x", "--data_path", str(multi_stores / "feats"), "--datasets",
                 "FundusClassificationMulti", "--output_dir", str(multi_stores / "o2"), "--embed_dim", "768", *FAST)
    assert rc == 2 and "--embed_dim is 768" in capsys.readouterr().err


# -- fusion on a subject-paired set (in-memory stores) ----------------------------------------------------


D = 16


def _write_paired(root: Path, n_subjects: dict[str, int], seed: int = 0, missing_oct: float = 0.2,
                  with_subjects: bool = True, conflict: str | None = None) -> Path:
    """Subjects S<i> with one Fundus and (mostly) one OCT image; 4 labels; Fundus features show labels
    0-1 only, OCT features labels 2-3 only, so only a per-subject fusion sees all four."""
    rng = np.random.default_rng(seed)
    meta = {"weights_sha256": None, "arch": "vit_tiny", "patch_size": 16, "input_size": 32, "block_ids": [8, 9, 10, 11],
            "mode": "cls", "embed_dim": D, "pass": 0, "passes": 1}
    proj = {m: rng.normal(0, 1, (2, D)) for m in ("Fundus", "OCT")}
    for split, n in n_subjects.items():
        y = rng.integers(0, 2, (n, 4)).astype(np.float32)
        for mod, cols in (("Fundus", [0, 1]), ("OCT", [2, 3])):
            keep = np.ones(n, bool) if mod == "Fundus" else rng.random(n) >= missing_oct
            idx = np.nonzero(keep)[0]
            signal = (y[idx][:, cols] * 2 - 1) @ proj[mod]
            cls = signal[:, None, :] + rng.normal(0, 1.0, (len(idx), 4, D))
            labels = y[idx].copy()
            if conflict and split == "training" and mod == "OCT":
                labels[0, 0] = 1 - labels[0, 0]
            index = [{"rel_path": f"dataset_A/{split}/{mod.lower()}_{i:04d}.png", "dataset": "dataset_A",
                      "subject": f"S{split[:2]}{i:04d}" if with_subjects else ""} for i in idx]
            FeatureStore.write(root / mod / "dataset_A" / split / "pass_0", torch.tensor(cls, dtype=torch.float32),
                               torch.tensor(labels), index,
                               {**meta, "modality": mod, "weights_fingerprint": f"enc-{mod}", "split": split})
    return root


def _fused(root: Path, name: str, fusion: str, *extra: str) -> int:
    return run_cli("train-multi-cls", "--name", name, "--data_path", str(root), "--datasets", "Fundus", "OCT",
                   "--embed_dim", str(D), "--label_layout", "multilabel", "--num_labels", "4", "--fusion", fusion,
                   "--epochs", "15", "--optimizer", "adamw", "--lr", "0.01", "--output_dir", str(root / "out"),
                   *FAST, *extra)


def test_fusion_concat_and_attention_beat_chance(tmp_path):
    root = _write_paired(tmp_path, {"training": 240, "val": 60, "test": 80})
    aurocs = {}
    for fusion in ("pooled", "concat", "attention"):
        assert _fused(root, fusion, fusion) == 0
        m = json.loads((root / "out" / fusion / "report" / "metrics.json").read_text())
        aurocs[fusion] = m["auroc_macro"]
    assert aurocs["concat"] >= 0.8 and aurocs["attention"] >= 0.8, aurocs
    assert aurocs["concat"] > aurocs["pooled"] + 0.05, aurocs  # pooled images each see half the labels
    subjects = json.loads((root / "out" / "concat" / "test_subjects.json").read_text())
    assert len(subjects) == 80 and any("OCT" not in v for v in subjects.values())  # a missing modality
    assert all(len(v["Fundus"]) == 1 for v in subjects.values())


def test_build_inputs_presence_flags_and_subject_map(tmp_path):
    from visionfm.models.heads.fusion import AttentionFusion, ConcatFusion, unpack_modalities
    from visionfm.tasks.multimodal import SubjectMap, build_inputs, load_entries

    root = _write_paired(tmp_path, {"test": 12}, missing_oct=0.5, with_subjects=False)
    parts = load_entries(root, ["Fundus", "OCT"], "test", D)
    alone = build_inputs(parts, "concat")
    assert len(alone) == sum(len(p) for p in parts)  # no subject ids: every image is its own subject
    csv_rows = ["path,subject"]
    for p in parts:
        for rel in p.rel_paths:
            csv_rows.append(f"/raw/{p.modality}/{rel},P{rel.rsplit('_', 1)[1][:4]}")  # absolute path: suffix match
    smap_file = tmp_path / "subjects.csv"
    smap_file.write_text("\n".join(csv_rows) + "\n")
    fused = build_inputs(parts, "concat", subject_map=SubjectMap.read(smap_file))
    assert len(fused) == 12 and fused.x.shape == (12, 2, 4 * D + 1)
    feats, present = unpack_modalities(fused.x)
    assert present[:, 0].all() and not present[:, 1].all()
    assert float(feats[~present].abs().sum()) == 0.0  # an absent modality is zeros + flag 0
    out = ConcatFusion(2, 4 * D)(fused.x)
    assert out.shape == (12, 2 * 4 * D + 2) and torch.equal(out[:, -2:], present.float())
    att = AttentionFusion(2, 4 * D)
    w = att.weights(fused.x)
    assert torch.allclose(w.sum(1), torch.ones(12)) and float(w[~present].abs().sum()) == 0.0
    assert torch.allclose(att(fused.x)[~present[:, 1]], feats[~present[:, 1], 0], atol=1e-5)


def test_mismatched_subject_labels_name_the_subject(tmp_path, capsys):
    root = _write_paired(tmp_path, {"training": 20, "test": 10}, missing_oct=0.0, conflict="yes")
    assert _fused(root, "bad", "concat") == 2
    err = capsys.readouterr().err
    assert "subject 'Str0000'" in err and "different labels" in err
