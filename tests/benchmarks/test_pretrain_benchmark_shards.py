"""Smoke test of ``--data folder shards`` (and ``--ddp_scaling``) in benchmarks/pretrain_throughput.py:
the tiniest configuration reads the same JPEGs from a folder and from tar shards packed by the project's
own writer, and reports both side by side. No timing assertions."""

import json
import math
import os
import sys

import pytest

from tests.benchmarks.test_pretrain_benchmark_smoke import _load_script


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


TINY = ["--arch", "vit_tiny", "--batch_size", "2", "--input_size", "32", "--steps", "1", "--warmup", "1",
        "--jpeg_size", "64", "--num_jpegs", "6", "--threads", "1", "--cost_images", "2", "--skip_baseline"]


def test_folder_and_shards_side_by_side(tmp_path, capsys):
    bench = _load_script()
    out = tmp_path / "bench.json"
    bench.main([*TINY, "--workers", "1", "--data", "folder", "shards", "--shard_size", "4KB", "--ddp_scaling",
                "--tmp_dir", str(tmp_path), "--json", str(out)])
    res = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "shards/folder" in printed and "data sources" in printed

    folder, shards = res["data_sources"]["folder"], res["data_sources"]["shards"]
    assert folder["reader"] == "PretrainImages" and shards["reader"] == "ShardImages"  # the trainer's own choice
    # the same images, read the same number of times, through the same loaders
    assert folder["n_images"] == shards["n_images"] == shards["indexed_images"] == 6
    assert folder["images_read"] == shards["images_read"] == res["pipeline"]["batches"] * 2
    assert shards["n_shards"] > 1 and shards["total_bytes"] > 0  # 4 KB shards: several of them
    for d in (folder, shards):
        for figure in (d["read_ms"], d["read_decode_ms"], *d["loader"].values(), *d["end_to_end"].values()):
            assert _positive_finite(figure), figure
        assert set(d["loader"]) == set(d["end_to_end"]) == {"ours_cpu_path_images_per_s",
                                                            "ours_device_path_images_per_s"}
    ratio = res["ratio_shards_over_folder"]
    assert ratio["loader_ours_cpu_path_images_per_s"] == pytest.approx(
        shards["loader"]["ours_cpu_path_images_per_s"] / folder["loader"]["ours_cpu_path_images_per_s"])
    assert all(_positive_finite(v) for v in ratio.values())
    # the first --data source fills the figures compared with the original
    assert res["pipeline"]["loader_data"] == "folder"
    assert res["pipeline"]["ours_cpu_path_images_per_s"] == folder["loader"]["ours_cpu_path_images_per_s"]
    if "skipped" in res["ddp_scaling"]:  # this machine has fewer than 2 GPUs: one clear line
        assert "DDP scaling: skipped (needs at least 2 CUDA devices" in printed
    assert not any(p.name.startswith("vfm_bench_") for p in tmp_path.iterdir())


def test_shards_alone_and_bad_flags(tmp_path):
    bench = _load_script()
    res = bench.main([*TINY, "--workers", "0", "--data", "shards", "--skip_end_to_end", "--tmp_dir", str(tmp_path)])
    assert list(res["data_sources"]) == ["shards"] and "ratio_shards_over_folder" not in res
    assert res["pipeline"]["loader_data"] == "shards"
    assert res["pipeline"]["ours_cpu_path_images_per_s"] == res["data_sources"]["shards"]["loader"][
        "ours_cpu_path_images_per_s"]
    assert res["data_sources"]["shards"]["n_shards"] == 1  # the default 1GB
    for bad in (["--data", "shards", "shards"], ["--shard_size", "lots"]):
        with pytest.raises(SystemExit):
            bench.main([*TINY, *bad, "--tmp_dir", str(tmp_path)])


@pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "fork"), reason="torchrun with gloo on POSIX")
def test_ddp_scaling_mechanics_on_cpu_processes(tmp_path):
    """The torchrun path of --ddp_scaling, run on 1 and 2 CPU processes (gloo): the real run needs GPUs."""
    bench = _load_script()
    a = bench.build_parser().parse_args([*TINY, "--device", "cpu"])
    data = tmp_path / "data"
    bench.write_jpegs(data / bench.MODALITY, 4, 64, 0)
    got = bench.measure_ddp_scaling(a, data, tmp_path, [1, 2])
    assert got["world_sizes"] == [1, 2]
    assert got["runs"]["1"]["world_size"] == 1 and got["runs"]["2"]["world_size"] == 2
    assert got["runs"]["1"]["efficiency"] == pytest.approx(1.0)
    assert all(_positive_finite(r["images_per_s"]) and _positive_finite(r["efficiency"]) for r in got["runs"].values())
