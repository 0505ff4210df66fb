"""Feature store round trip, refusal of foreign/corrupt stores, extract CLI, torchrun equivalence."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionfm.data.features import FeatureStore, FeatureStoreError

SRC = str(Path(__file__).resolve().parents[2] / "src")


def write_vfm(root: Path, n_train: int = 24, n_test: int = 12, n_val: int = 0, kind: str = "multiclass",
              n_classes: int = 3, size: int = 32, seed: int = 0) -> Path:
    """A learnable vfm data set: class = brightness level (multiclass/binary); label j = bright colour channel j."""
    rng = np.random.default_rng(seed)
    ds = root / "dataset_A"
    for split, n in (("training", n_train), ("val", n_val), ("test", n_test)):
        if n == 0:
            continue
        (ds / split).mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(n):
            if kind == "multilabel":
                y = rng.integers(0, 2, 3)
                if y.sum() == 0:
                    y[i % 3] = 1
                arr = rng.integers(0, 40, (size, size, 3))
                for j in range(3):  # label j = colour channel j is bright
                    if y[j]:
                        arr[..., j] += 190
                lab = ",".join(str(int(v)) for v in y)
            else:
                k = i % n_classes
                level = 30 + 190 * k / max(n_classes - 1, 1)
                arr = np.clip(level + rng.normal(0, 12, (size, size, 3)), 0, 255)
                lab = str(k)
            name = f"{split}/{i:04d}.png"
            Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(ds / name)
            lines.append(f"{name};{lab}")
        (ds / f"{split}_labels.txt").write_text("\n".join(lines) + "\n")
    return root


def run_cli(*argv: str) -> int:
    from visionfm.cli.main import main

    return main(list(argv))


def _meta(**kw):
    base = {"weights_sha256": None, "weights_fingerprint": "abc", "arch": "vit_tiny", "patch_size": 16,
            "input_size": 32, "modality": "Fundus", "block_ids": [8, 9, 10, 11], "mode": "cls",
            "split": "test", "pass": 0}
    base.update(kw)
    return base


def _write(folder: Path, n: int = 5, **meta):
    cls = torch.randn(n, 4, 8)
    labels = torch.arange(n, dtype=torch.float32).reshape(n, 1)
    index = [{"rel_path": f"dataset_A/test/{i}.png", "dataset": "dataset_A", "subject": ""} for i in range(n)]
    FeatureStore.write(folder, cls, labels, index, _meta(**meta), patch_mean=torch.randn(n, 8))
    return cls, labels


def test_store_round_trip(tmp_path):
    cls, labels = _write(tmp_path / "s")
    st = FeatureStore.open(tmp_path / "s", expect=_meta())
    assert torch.equal(st.cls, cls) and torch.equal(st.labels, labels)
    assert st.rel_paths[2] == "dataset_A/test/2.png" and len(st) == 5
    assert st.meta["n_samples"] == 5 and st.meta["tensors"]["cls"] == [5, 4, 8]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temporary folders left
    _write(tmp_path / "s", n=3)  # replacing is atomic too
    assert len(FeatureStore.open(tmp_path / "s")) == 3


def test_store_refuses_other_encoder(tmp_path):
    _write(tmp_path / "s")
    with pytest.raises(FeatureStoreError, match=r"weights_fingerprint.*'abc'.*'xyz'"):
        FeatureStore.open(tmp_path / "s", expect=_meta(weights_fingerprint="xyz"))
    with pytest.raises(FeatureStoreError, match="input_size"):
        FeatureStore.open(tmp_path / "s", expect=_meta(input_size=64))
    with pytest.raises(FeatureStoreError, match=str(tmp_path / "s")):
        FeatureStore.open(tmp_path / "s", expect=_meta(modality="OCT"))


def test_store_refuses_corrupt_or_truncated(tmp_path):
    _write(tmp_path / "s")
    f = tmp_path / "s" / "features.safetensors"
    data = bytearray(f.read_bytes())
    f.write_bytes(bytes(data[:-7]))
    with pytest.raises(FeatureStoreError, match="truncated"):
        FeatureStore.open(tmp_path / "s")
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(FeatureStoreError, match="corrupt"):
        FeatureStore.open(tmp_path / "s")
    _write(tmp_path / "t")
    (tmp_path / "t" / "meta.json").unlink()
    with pytest.raises(FeatureStoreError, match="unfinished"):
        FeatureStore.open(tmp_path / "t")
    _write(tmp_path / "u")
    lines = (tmp_path / "u" / "index.csv").read_text().splitlines()
    (tmp_path / "u" / "index.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(FeatureStoreError, match="index.csv has 4 rows"):
        FeatureStore.open(tmp_path / "u")


EXTRACT = ["--arch", "vit_tiny", "--input_size", "32", "--patch_size", "16", "--modality", "Fundus",
           "--batch_size_per_gpu", "7", "--num_workers", "0", "--epochs", "2", "--device", "cpu"]


def test_extract_layout_resume_and_flips(tmp_path):
    data = write_vfm(tmp_path / "data", n_train=10, n_test=6, n_val=4)
    dst = tmp_path / "feats"
    assert run_cli("extract", "--pretrained_weights", "random", "--data_path", str(data), "--dst_root", str(dst),
                   *EXTRACT) == 0
    found = sorted(str(p.relative_to(dst)) for p in dst.glob("*/*/pass_*"))
    assert found == ["dataset_A/test/pass_0", "dataset_A/training/pass_0", "dataset_A/training/pass_1",
                     "dataset_A/val/pass_0"]
    p0 = FeatureStore.open(dst / "dataset_A/training/pass_0")
    p1 = FeatureStore.open(dst / "dataset_A/training/pass_1")
    assert p0.cls.shape == (10, 4, 192) and p0.meta["flip"] == "hv" and p0.meta["passes"] == 2
    assert not torch.allclose(p0.cls, p1.cls)  # different flips per pass
    assert p0.rel_paths == p1.rel_paths == [f"dataset_A/training/{i:04d}.png" for i in range(10)]
    test = FeatureStore.open(dst / "dataset_A/test/pass_0")
    assert test.meta["flip"] == "none" and test.labels[:, 0].tolist() == [0, 1, 2, 0, 1, 2]
    mtime = (dst / "dataset_A/test/pass_0/meta.json").stat().st_mtime_ns
    assert run_cli("extract", "--pretrained_weights", "random", "--data_path", str(data), "--dst_root", str(dst),
                   *EXTRACT) == 0
    assert (dst / "dataset_A/test/pass_0/meta.json").stat().st_mtime_ns == mtime  # finished pass skipped
    # an interrupted run's shard is reused when its identity matches
    shard = dst / "dataset_A/val/pass_0.shards/rank0of1"
    shutil.copytree(dst / "dataset_A/val/pass_0", shard)
    import json

    m = json.loads((shard / "meta.json").read_text())
    m.update(shard=[0, 1], shard_rows=[0, 4])
    (shard / "meta.json").write_text(json.dumps(m))
    shutil.rmtree(dst / "dataset_A/val/pass_0")
    assert run_cli("extract", "--pretrained_weights", "random", "--data_path", str(data), "--dst_root", str(dst),
                   *EXTRACT) == 0
    assert not shard.parent.exists() and len(FeatureStore.open(dst / "dataset_A/val/pass_0")) == 4


def test_extract_requires_dst_root_and_weights(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli("extract", "--pretrained_weights", "random", "--data_path", str(tmp_path))
    with pytest.raises(SystemExit):
        run_cli("extract", "--dst_root", str(tmp_path), "--data_path", str(tmp_path))


@pytest.mark.distributed
@pytest.mark.xdist_group("torchrun")
def test_torchrun_extraction_equals_single_process(tmp_path):
    data = write_vfm(tmp_path / "data", n_train=9, n_test=5)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    flags = ["extract", "--pretrained_weights", "random", "--data_path", str(data), *EXTRACT]
    cmd = [torchrun, "--nproc_per_node=2", "--master_port=0", "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0",
           "-m", "visionfm.cli.main", *flags, "--dst_root", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert run_cli(*flags, "--dst_root", str(tmp_path / "single")) == 0
    for rel in ("dataset_A/training/pass_0", "dataset_A/training/pass_1", "dataset_A/test/pass_0"):
        a = FeatureStore.open(tmp_path / "ddp" / rel)
        b = FeatureStore.open(tmp_path / "single" / rel)
        assert a.rel_paths == b.rel_paths
        assert torch.equal(a.labels, b.labels)
        torch.testing.assert_close(a.cls, b.cls, atol=1e-5, rtol=1e-5)
        assert a.meta["weights_fingerprint"] == b.meta["weights_fingerprint"]
    assert not list((tmp_path / "ddp").rglob("*.shards"))
