"""A bounded load test on loopback: 200 predictions, 8 at a time, no errors, the event loop stays
responsive, and memory is stable. Prints p50/p95 latency (recorded in docs/serve.md)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time

import numpy as np
import pytest

from tests.serve.conftest import live_server

httpx = pytest.importorskip("httpx")

N_REQUESTS = 200
CONCURRENCY = 8


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@pytest.mark.xdist_group("serve_live")
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc to measure memory")
def test_bounded_load(models_dir):
    from visionfm.serve.app import EXAMPLES_DIR, create_app

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    image = (EXAMPLES_DIR / "synthetic_fundus.jpg").read_bytes()
    app = create_app(models_dir, workers=2, preload=True)

    async def drive(url: str) -> tuple[list[float], list[float], list[str]]:
        sem = asyncio.Semaphore(CONCURRENCY)
        latencies: list[float] = []
        health: list[float] = []
        errors: list[str] = []

        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            async def one(i: int) -> None:
                async with sem:
                    t0 = time.perf_counter()
                    r = await client.post("/api/predict", files={"file": ("fundus.jpg", image, "image/jpeg")},
                                          data={"model": "dr" if i % 2 else "seg"})
                    latencies.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        errors.append(f"{r.status_code}: {r.text[:200]}")

            async def probe() -> None:  # the event loop keeps answering while models run
                for _ in range(10):
                    t0 = time.perf_counter()
                    r = await client.get("/healthz")
                    health.append(time.perf_counter() - t0)
                    assert r.status_code == 200
                    await asyncio.sleep(0.2)

            await asyncio.gather(*(one(i) for i in range(20)))  # warm-up
            latencies.clear()
            gc.collect()
            drive.rss_before = _rss_mb()  # type: ignore[attr-defined]
            await asyncio.gather(probe(), *(one(i) for i in range(N_REQUESTS)))
        return latencies, health, errors

    with live_server(app) as url:
        t0 = time.perf_counter()
        latencies, health, errors = asyncio.run(drive(url))
        wall = time.perf_counter() - t0
    gc.collect()
    growth = _rss_mb() - drive.rss_before  # type: ignore[attr-defined]
    p50, p95 = np.percentile(latencies, [50, 95])
    print(f"\nload: {N_REQUESTS} requests, {CONCURRENCY} concurrent, {wall:.1f} s; latency p50 {p50 * 1000:.0f} ms, "
          f"p95 {p95 * 1000:.0f} ms; /healthz max {max(health) * 1000:.0f} ms; RSS growth {growth:.1f} MB")
    assert errors == []
    assert len(latencies) == N_REQUESTS
    assert max(health) < 2.0, health
    assert growth < 150, f"RSS grew {growth:.1f} MB over {N_REQUESTS} requests"
