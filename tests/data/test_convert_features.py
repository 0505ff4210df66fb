"""convert-features: the original's feature pickles become stores that train-multi-cls / train-reg / train-cls read
like our own; booby-trapped and malformed files are refused with one line naming the file."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from visionfm.cli.main import main as cli_main


def write_original_tree(dst_root: Path, splits: dict[str, int], epochs: int = 3, d: int = 192, labels=None,
                        datasets=("dataset_A", "dataset_B"), seed: int = 0, protocol: int | None = None) -> dict:
    """What extract_features.py --dst_root dst_root writes (reference §2.9): for each image and epoch a plain
    ``pickle.dump`` of the cls-mode dict; training images once per epoch, test images once (``_0``).

    Returns ``{(dataset, split, epoch, img_name): (feats [4, D], labels)}``.
    """
    rng = np.random.default_rng(seed)
    written = {}
    for ds in datasets:
        for split, n in splits.items():
            for i in range(n):
                img_path = f"./dataset/multi_cls_random/FundusClassificationMulti/{ds}/{split}/{i:08d}.png"
                dst_path = f"{dst_root}/{ds}/{split}/{i:08d}.png"
                lab = (labels(rng, i) if labels is not None else rng.random(3)).astype(np.float32)
                for epoch in range(epochs if split == "training" else 1):
                    feats_dict = {}
                    feats_dict["img_name"] = "/".join(dst_path.split("/")[-3:])
                    feats_dict["feats_idx"] = [8, 9, 10, 11]
                    feats_dict["feats"] = [rng.standard_normal(d).astype(np.float32) for _ in range(4)]
                    feats_dict["labels"] = lab
                    feats_dict["img_path"] = img_path
                    f_dir, f_name = os.path.split(dst_path)
                    os.makedirs(f_dir, exist_ok=True)
                    with open(os.path.join(f_dir, f_name.split(".")[0] + f"_{epoch}.pickle"), "wb") as file:
                        if protocol is None:
                            pickle.dump(feats_dict, file)
                        else:
                            pickle.dump(feats_dict, file, protocol=protocol)
                    written[(ds, split, epoch, feats_dict["img_name"])] = (np.stack(feats_dict["feats"]), lab)
    return written


def _visionfm13(rng, i):
    grade = np.eye(5)[i % 5]
    return np.concatenate([grade, [float(i % 5 > 0)], rng.integers(0, 2, 7)])


def test_round_trip_into_train_multi_cls(tmp_path, capsys):
    written = write_original_tree(tmp_path / "feats" / "FunClsFeat", {"training": 10, "test": 5}, epochs=3,
                                  labels=_visionfm13)
    assert cli_main(["convert-features", str(tmp_path / "feats" / "FunClsFeat"),
                     str(tmp_path / "stores" / "FunClsFeat"), "--modality", "fundus", "--progress", "false"]) == 0
    assert "70 feature files -> 8 stores" in capsys.readouterr().out
    root = tmp_path / "stores" / "FunClsFeat"
    assert sorted(str(p.relative_to(root)) for p in root.glob("*/*/pass_*")) == sorted(
        f"{ds}/{s}/pass_{k}" for ds in ("dataset_A", "dataset_B") for s, n in (("training", 3), ("test", 1))
        for k in range(n))
    assert not [p for p in tmp_path.joinpath("stores").iterdir() if p.name.startswith(".")]  # no temp left
    from visionfm.data.features import FeatureStore

    st = FeatureStore.open(root / "dataset_B" / "training" / "pass_2")
    m = st.meta
    assert (m["provenance"], m["source_epoch"], m["passes"], m["flip"], m["modality"], m["arch"], m["embed_dim"],
            m["block_ids"], m["weights_fingerprint"]) == (
        "converted from original pickles", 2, 3, "hv", "Fundus", "vit_tiny", 192, [8, 9, 10, 11], None)
    assert m["source"] == str((tmp_path / "feats" / "FunClsFeat" / "dataset_B" / "training").resolve())
    # every row is the pickle it came from, values bit-identical
    for row, cls, lab in zip(st.index, st.cls, st.labels):
        feats, labels = written[("dataset_B", "training", 2, row["rel_path"])]
        assert row["dataset"] == "dataset_B" and torch.equal(cls, torch.from_numpy(feats))
        assert torch.equal(lab, torch.from_numpy(labels))
    # what the decoders see: N = images × epochs, D from the stores, labels as written
    from visionfm.tasks.multimodal import load_entries

    (train,) = load_entries(tmp_path / "stores", ["FunClsFeat"], "training", None)
    (test,) = load_entries(tmp_path / "stores", ["FunClsFeat"], "test", None)
    assert (len(train), len(test), train.cls.shape[1:], train.labels.shape[1]) == (60, 10, (4, 192), 13)
    assert train.n_passes == 3 and test.modality == "Fundus"
    out = tmp_path / "results"
    assert cli_main(["train-multi-cls", "--name", "train_debug", "--output_dir", str(out), "--datasets", "FunClsFeat",
                     "--data_path", str(tmp_path / "stores"), "--epochs", "2", "--batch_size_per_gpu", "16",
                     "--report_n_boot", "0", "--device", "cpu"]) == 0
    info = json.loads((out / "train_debug" / "checkpoint_best.json").read_text())
    assert info["embed_dim"] == 192 and info["feat_dim"] == 768
    assert list((out / "train_debug").glob("checkpoint_*_linear.pth"))
    # train-cls reads a converted tree as a --features store too
    assert cli_main(["train-cls", "--name", "cls", "--features", str(root), "--num_labels", "13", "--epochs", "1",
                     "--batch_size_per_gpu", "16", "--output_dir", str(out), "--report_n_boot", "0",
                     "--device", "cpu"]) == 0


def test_round_trip_into_train_reg(tmp_path):
    write_original_tree(tmp_path / "feats" / "FunRegFeat", {"training": 8, "test": 4}, epochs=2, d=16,
                        labels=lambda rng, i: 1.0 + rng.random(3), datasets=("dataset_A",), protocol=5)
    write_original_tree(tmp_path / "feats" / "ExternalRegFeat", {"training": 6, "test": 4}, epochs=2, d=16,
                        labels=lambda rng, i: 1.0 + rng.random(3), datasets=("dataset_A",), seed=1, protocol=0)
    for name in ("FunRegFeat", "ExternalRegFeat"):
        assert cli_main(["convert-features", str(tmp_path / "feats" / name), str(tmp_path / "stores" / name),
                         "--progress", "false"]) == 0
    meta = json.loads((tmp_path / "stores" / "FunRegFeat" / "dataset_A" / "test" / "pass_0" / "meta.json").read_text())
    assert meta["modality"] is None and meta["arch"] is None and meta["flip"] == "none"  # not known: not invented
    out = tmp_path / "results"
    assert cli_main(["train-reg", "--name", "train_metric_reg_multi", "--output_dir", str(out), "--datasets",
                     "FunRegFeat", "ExternalRegFeat", "--data_path", str(tmp_path / "stores"), "--num_labels", "3",
                     "--epochs", "2", "--batch_size_per_gpu", "8", "--report_n_boot", "0", "--device", "cpu"]) == 0
    info = json.loads((out / "train_metric_reg_multi" / "checkpoint_best.json").read_text())
    assert info["embed_dim"] == 16 and info["num_outputs"] == 3


def test_booby_trapped_file_is_refused_and_nothing_is_written(tmp_path, capsys):
    from tests.io.test_restricted_pickle import _Shell

    src = tmp_path / "feats" / "FunClsFeat"
    write_original_tree(src, {"training": 3, "test": 2}, epochs=1)
    marker = tmp_path / "pwned"
    bad = src / "dataset_B" / "training" / "00000001_0.pickle"
    with open(bad, "rb") as fh:
        d = pickle.load(fh)
    d["img_path"] = _Shell(str(marker))
    bad.write_bytes(pickle.dumps(d))
    assert cli_main(["convert-features", str(src), str(tmp_path / "stores" / "FunClsFeat"),
                     "--progress", "false"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{os.system.__module__}.system" in err and str(bad) in err
    assert not marker.exists()
    assert not (tmp_path / "stores").exists() or not list((tmp_path / "stores").iterdir())  # no DST, no temp


def _rewrite(path: Path, **changes):
    with open(path, "rb") as fh:
        d = pickle.load(fh)
    for k, v in changes.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    path.write_bytes(pickle.dumps(d))


@pytest.mark.parametrize("change, match", [
    ({"labels": None}, "missing key.*'labels'"),
    ({"feats": [np.zeros(8, np.float32)] * 3}, "4 arrays of one shape"),
    ({"feats": [np.zeros(8, np.float32)] * 4}, "features are 8 wide, but .* has 192"),
    ({"labels": np.zeros(5, np.float32)}, "5 labels, but .* has 3"),
    ({"feats_idx": [20, 21, 22, 23]}, r"feats_idx \[20, 21, 22, 23\], but"),
    ({"feats": [np.zeros((196, 192), np.float32)] * 4, "labels": np.zeros((224, 224), np.int64)}, "seg-mode"),
    ({"img_name": 7}, "'img_name' must be a non-empty string"),
])
def test_schema_errors_name_the_file(tmp_path, capsys, change, match):
    src = tmp_path / "src"
    write_original_tree(src, {"training": 2, "test": 2}, epochs=2, datasets=("dataset_A",))
    bad = src / "dataset_A" / "training" / "00000001_1.pickle"
    _rewrite(bad, **change)
    assert cli_main(["convert-features", str(src), str(tmp_path / "dst"), "--progress", "false"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err, err
    import re

    assert re.search(match, err), err
    assert not (tmp_path / "dst").exists()


def test_layout_errors_and_destination_rules(tmp_path, capsys):
    from visionfm.data.convert_features import convert_original_features
    from visionfm.errors import ConfigError, DataFormatError

    src = tmp_path / "feats" / "FunClsFeat"
    write_original_tree(src, {"training": 2, "test": 1}, epochs=1, datasets=("dataset_A",))
    with pytest.raises(ConfigError, match="one level down.*FunClsFeat"):  # the parent given instead of the entry
        convert_original_features(tmp_path / "feats", tmp_path / "out", progress=False)
    with pytest.raises(ConfigError, match="overlap"):
        convert_original_features(src, src / "stores", progress=False)
    dst = tmp_path / "stores" / "FunClsFeat"
    convert_original_features(src, dst, progress=False)
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        convert_original_features(src, dst, progress=False)
    (src / "dataset_A" / "test" / "00000000_0.pickle").unlink()
    (src / "dataset_A" / "test" / "notes.txt").write_text("ignored")
    s = convert_original_features(src, dst, overwrite=True, progress=False)
    assert [(st["split"], st["n_samples"]) for st in s.stores] == [("training", 2)]
    assert not (dst / "dataset_A" / "test").exists() and (dst / "dataset_A" / "training" / "pass_0").is_dir()
    (src / "dataset_A" / "training" / "00000000.pickle").write_bytes(b"")
    with pytest.raises(DataFormatError, match=r"00000000\.pickle: file name is not <stem>_<epoch>\.pickle"):
        convert_original_features(src, tmp_path / "other", progress=False)
    seg = tmp_path / "segfeats" / "dataset_A" / "training" / "images"
    seg.mkdir(parents=True)
    (seg / "1_0.pickle").write_bytes(b"")
    with pytest.raises(DataFormatError, match="seg-mode"):
        convert_original_features(tmp_path / "segfeats", tmp_path / "segstores", progress=False)
