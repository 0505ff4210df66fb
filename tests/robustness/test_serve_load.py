"""``visionfm serve`` under load on loopback: 50 requests, 8 at a time, against a live uvicorn server with
two tiny model folders (classification, segmentation) and, among them, a few bad uploads. No answer is a
5xx, every prediction equals the model's own output on the same image (and every repeat is identical),
the bad uploads get their 4xx, and the server process's memory stays bounded after warm-up."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.serve.conftest import live_server

httpx = pytest.importorskip("httpx")

N_REQUESTS = 50
CONCURRENCY = 8
N_WARMUP = 16
BAD_EVERY = 10  # every 10th request is a text file sent as an image: 415, never a 5xx
RSS_BOUND_MB = 64  # growth over the 50 requests after warm-up; a per-request leak of an image or a model shows
SIZE = 32


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@pytest.fixture(scope="module")
def load_setup(tmp_path_factory):
    """Two tiny model folders and four synthetic fundus PNGs (64 px)."""
    from visionfm.data.synth import generate
    from visionfm.models import build_encoder
    from visionfm.models.heads import ClsHead
    from visionfm.models.heads.unetr import UnetrHead
    from visionfm.packaging import model_folder_from_training

    tmp = tmp_path_factory.mktemp("serve_load")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        enc = build_encoder("vit_tiny", img_size=SIZE, patch_size=16)
        model_folder_from_training(
            tmp / "models" / "grading" / "model", encoder=enc, head=ClsHead(192 * 4, 3).eval(),
            task="classification", task_kind="multiclass", modality="Fundus", input_size=SIZE,
            features={"type": "pooled", "n_last_blocks": 4, "avgpool": 0}, head_type="cls",
            head_args={"embed_dim": 192 * 4, "num_classes": 3}, class_names=["normal", "dr", "amd"], name="Grading")
        model_folder_from_training(
            tmp / "models" / "disc", encoder=enc, head=UnetrHead(192, 3, patch_size=16).eval(),
            task="segmentation", modality="Fundus", input_size=SIZE, interpolation="bilinear",
            features={"type": "dense", "block_ids": [2, 5, 8, 11]}, head_type="unetr",
            head_args={"embed_dim": 192, "num_classes": 3, "patch_size": 16},
            class_names=["background", "disc", "cup"], name="Disc")
    generate("single_cls", tmp / "data", num=4, img_size=64, seed=5)
    images = sorted((tmp / "data").rglob("*.png"))[:4]
    assert len(images) == 4
    return tmp / "models", images


def _reference(models: Path, images: list[Path]) -> dict[tuple[str, int], dict]:
    """What each model itself says about each image (read by the same reader the server uses)."""
    from visionfm.inference.io import read_image
    from visionfm.packaging import from_pretrained

    ref = {}
    for mid, folder in (("grading", models / "grading" / "model"), ("disc", models / "disc")):
        model = from_pretrained(folder)
        for i, path in enumerate(images):
            im = read_image(path)
            with torch.no_grad():
                pred = model.predict([im])
            if mid == "grading":
                ref[mid, i] = {"probabilities": pred["probabilities"][0].tolist()}
            else:
                mask = np.asarray(pred["masks"][0])
                ref[mid, i] = {"fractions": [float((mask == c).mean()) for c in (1, 2)]}
    return ref


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc to measure memory")
def test_serve_under_load(load_setup):
    from visionfm.serve.app import create_app

    models, images = load_setup
    logging.getLogger("httpx").setLevel(logging.WARNING)
    payloads = [p.read_bytes() for p in images]
    app = create_app(models, workers=2, preload=True)
    assert sorted(app.state.registry.entries) == ["disc", "grading"]

    async def drive(url: str):
        sem = asyncio.Semaphore(CONCURRENCY)
        answers: list[tuple[int, str, int, int, dict]] = []  # (request, model, image, status, body)
        peak = {"now": 0, "max": 0}

        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            async def one(i: int) -> None:
                mid, k = ("grading", "disc")[i % 2], (i // 2) % len(payloads)
                bad = i % BAD_EVERY == BAD_EVERY - 1
                data = b"patient,eye\nA,left\n" if bad else payloads[k]
                async with sem:
                    peak["now"] += 1
                    peak["max"] = max(peak["max"], peak["now"])
                    r = await client.post("/api/predict", data={"model": mid, "overlay": "false"},
                                          files={"file": ("scan.png", data, "image/png")})
                    peak["now"] -= 1
                answers.append((i, mid, -1 if bad else k, r.status_code, r.json()))

            await asyncio.gather(*(one(i) for i in range(N_WARMUP)))
            answers.clear()
            gc.collect()
            drive.rss_before = _rss_mb()  # type: ignore[attr-defined]
            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(N_REQUESTS)))
            drive.wall = time.perf_counter() - t0  # type: ignore[attr-defined]
        return answers, peak["max"]

    with live_server(app) as url:
        answers, peak = asyncio.run(drive(url))
    gc.collect()
    growth = _rss_mb() - drive.rss_before  # type: ignore[attr-defined]
    statuses = [a[3] for a in answers]
    n5xx = sum(s >= 500 for s in statuses)
    print(f"\nserve load: {len(answers)} requests, {CONCURRENCY} concurrent (peak {peak}), "
          f"{drive.wall:.1f} s; status counts {dict(sorted((s, statuses.count(s)) for s in set(statuses)))}; "  # type: ignore[attr-defined]
          f"5xx: {n5xx}; RSS growth after warm-up {growth:.1f} MB (bound {RSS_BOUND_MB} MB)")
    assert len(answers) == N_REQUESTS and peak == CONCURRENCY
    assert n5xx == 0, [a for a in answers if a[3] >= 500]
    bad = [a for a in answers if a[2] == -1]
    assert len(bad) == N_REQUESTS // BAD_EVERY and all(a[3] == 415 and "not a supported image" in a[4]["detail"]
                                                       for a in bad)
    ref = _reference(models, images)
    seen: dict[tuple[str, int], str] = {}
    for _, mid, k, status, body in (a for a in answers if a[2] != -1):
        assert status == 200, body
        key = json.dumps(body["prediction"], sort_keys=True)
        assert seen.setdefault((mid, k), key) == key, (mid, k)  # every repeat of a request: the same answer
        if mid == "grading":
            got = [body["prediction"]["probabilities"][n] for n in ("normal", "dr", "amd")]
            np.testing.assert_allclose(got, ref[mid, k]["probabilities"], atol=1e-5)
        else:
            got = {s["name"]: s["fraction"] for s in body["segmentation"]}
            np.testing.assert_allclose([got["disc"], got["cup"]], ref[mid, k]["fractions"], atol=1e-6)
    assert len(seen) == 2 * len(images)  # both models, every image
    assert growth < RSS_BOUND_MB, f"RSS grew {growth:.1f} MB over {N_REQUESTS} requests"
