"""Tar shards in the WebDataset layout: folder → shards → the same images, modalities and training run."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch

from visionfm.cli.main import main as cli_main


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    from visionfm.data.synth import generate

    generate("pretrain", root / "src", num=12, img_size=48, seed=0)
    assert cli_main(["prepare", "--data_path", str(root / "src"), "--output_dir", str(root / "prep"), "--format",
                     "shards", "--shard_size", "20KB", "--modality", "Fundus,OCT,UBM", "--workers", "1",
                     "--short_side", "40", "--progress", "false"]) == 0
    return root


def test_shards_hold_the_prepared_images_with_their_modalities(prepared):
    from visionfm.data.layouts.pretrain import PretrainImages
    from visionfm.data.shards import ShardImages

    prep = prepared / "prep"
    index = json.loads((prep / "shards.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1" and index["n_images"] == 36
    assert index["modality_counts"] == {"Fundus": 12, "OCT": 12, "UBM": 12} and len(index["shardlist"]) >= 3
    assert sum(s["nsamples"] for s in index["shardlist"]) == 36
    names = tarfile.open(prep / index["shardlist"][0]["url"]).getnames()
    assert names[0].endswith(".jpg") and names[1] == names[0][:-4] + ".json"  # WebDataset: key.jpg + key.json
    folder = PretrainImages(prep / "images", ["Fundus", "OCT", "UBM"])
    shards = ShardImages(prep / "shards.json", ["Fundus", "OCT", "UBM"])
    assert len(shards) == len(folder) == 36 and shards.modality_counts() == folder.modality_counts()
    for i in range(len(folder)):
        (a, ma), (b, mb) = folder[i], shards[i]
        assert ma == mb and np.array_equal(np.asarray(a), np.asarray(b)), i  # the same pixels, in the same order
    # per-sample JSON: modality, the source file, its original and its prepared size
    first = tarfile.open(prep / index["shardlist"][0]["url"])
    meta = json.loads(first.extractfile(first.getnames()[1]).read())
    assert meta["modality"] == "Fundus" and meta["original_size"] == [48, 48] and meta["size"] == [40, 40]
    assert (prepared / "src").as_posix() in meta["source"]
    # a modality subset and balanced weights work as with folders
    sub = ShardImages(prep, ["OCT"])
    assert len(sub) == 12 and {m for _, m in sub.samples} == {"OCT"}
    assert shards.sample_weights("balanced") == folder.sample_weights("balanced")


def test_an_interrupted_pack_keeps_finished_shards_and_rewrites_the_rest(prepared, tmp_path):
    import shutil

    from visionfm.data.prepare import prepare_shards

    prep = tmp_path / "prep"
    shutil.copytree(prepared / "prep", prep)
    index = json.loads((prep / "shards.json").read_text())
    first, last = (prep / index["shardlist"][i]["url"] for i in (0, -1))
    stamp = first.stat().st_mtime_ns
    last.unlink()
    again = prepare_shards(prepared / "src", prep, "Fundus,OCT,UBM", shard_size="20KB", workers=1,
                           short_side=40)["shards"]
    assert again["n_shards"] == len(index["shardlist"]) and again["n_images"] == 36
    again = json.loads((prep / "shards.json").read_text())
    assert first.stat().st_mtime_ns == stamp  # kept, its sha256 checked
    assert [s["sha256"] for s in again["shardlist"]] == [s["sha256"] for s in index["shardlist"]]  # same bytes
    with pytest.raises(Exception, match="missing"):
        last.unlink()
        from visionfm.data.shards import ShardImages

        ShardImages(prep / "shards.json", ["Fundus"])


def test_pretraining_from_shards_equals_pretraining_from_the_folder(prepared, tmp_path):
    prep = prepared / "prep"
    common = ["--modality", "Fundus", "--arch", "vit_tiny", "--input_size", "32", "--batch_size_per_gpu", "4",
              "--epochs", "1", "--warmup_epochs", "0", "--warmup_teacher_temp_epochs", "0", "--out_dim", "32",
              "--patch_out_dim", "32", "--num_workers", "0", "--no_progress", "--seed", "5", "--output_dir",
              str(tmp_path)]
    assert cli_main(["pretrain", "--data_path", str(prep / "images"), "--name", "folder", *common]) == 0
    assert cli_main(["pretrain", "--data_path", str(prep / "shards.json"), "--name", "shards", *common]) == 0
    a = torch.load(tmp_path / "folder" / "checkpoint.pth", weights_only=False)["teacher"]
    b = torch.load(tmp_path / "shards" / "checkpoint.pth", weights_only=False)["teacher"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-exact on CPU


def test_bad_shard_size_is_one_line(tmp_path, capsys):
    rc = cli_main(["prepare", "--data_path", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--format",
                   "shards", "--shard_size", "lots"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--shard_size 'lots'" in err[0]


def test_each_rank_reads_only_its_share_of_the_shards(prepared):
    """Two ranks of one epoch: each reads exactly the samples the global sampler gives it, none of the
    other's, and together every sample once (no rank scans the shards)."""
    from visionfm.data.shards import ShardImages
    from visionfm.pretrain.data import ResumableSampler

    read: dict[int, list[int]] = {0: [], 1: []}
    for rank in (0, 1):
        images = ShardImages(prepared / "prep" / "shards.json", ["Fundus", "OCT", "UBM"])
        load = images._load
        images._load = lambda i, rank=rank, load=load: read[rank].append(i) or load(i)
        sampler = ResumableSampler(len(images), 6, rank, 2, seed=0)
        sampler.set_epoch(1)
        wanted = [i for _, i in sampler]
        for i in wanted:
            images[i]
        assert read[rank] == wanted
    assert not set(read[0]) & set(read[1]) and sorted(read[0] + read[1]) == list(range(36))


def test_a_file_url_names_the_same_shard_index(prepared):
    from visionfm.data.shards import ShardImages, is_shard_index

    index = prepared / "prep" / "shards.json"
    assert is_shard_index(index.as_uri()) == index and is_shard_index((prepared / "prep").as_uri()) == index
    by_url, by_path = ShardImages(index.as_uri(), ["OCT"]), ShardImages(index, ["OCT"])
    assert by_url.samples == by_path.samples and np.array_equal(np.asarray(by_url[3][0]), np.asarray(by_path[3][0]))
