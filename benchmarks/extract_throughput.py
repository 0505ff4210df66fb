#!/usr/bin/env python
"""Throughput of frozen-encoder feature extraction, against the original's style, in one run.

* **ours** — ``visionfm extract``'s code path (:func:`visionfm.engine.features.extract_to_store`):
  PNG files on disk → ``VFMDataset`` + ``eval_transform`` → DataLoader (``--workers``) → encoder
  (bf16 autocast on CUDA, fp32 on CPU) → one finished feature store (safetensors + index + meta,
  hashed and renamed into place). images/s = images / wall time until the store is complete.
* **baseline** — the original ``extract_features.py`` style (reference §2.9, §5.1): the same loader,
  the encoder in fp32, then **one pickle per image** written with the stdlib ``pickle`` module
  (``{img_name, feats_idx, feats: 4 float32 arrays, labels, img_path}``) into a temporary folder.
* **encoder-only** — steady-state images/s of the encoder alone on a batch already on the device
  (ours: bf16 autocast on CUDA), after warm-up.
* **peak memory** — CUDA: ``torch.cuda.max_memory_allocated``; CPU: the process's maximum RSS.

Example: ``python benchmarks/extract_throughput.py --arch vit_base --input_size 224 --num_images 512
--batch 128 --workers 8 --device cuda``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pickle
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _write_images(root: Path, n: int, size: int, seed: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    ds = root / "dataset_A"
    (ds / "test").mkdir(parents=True)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    lines = []
    for i in range(n):
        arr = np.roll(base, shift=(i * 7) % size, axis=1)  # distinct files, cheap to make
        name = f"test/{i:08d}.png"
        Image.fromarray(arr).save(ds / name, compress_level=1)
        lines.append(f"{name};{i % 5}")
    (ds / "test_labels.txt").write_text("\n".join(lines) + "\n")
    return root


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_ours(encoder, dataset, device, batch, workers, dst: Path) -> float:
    from visionfm.engine.distributed import DistEnv
    from visionfm.engine.features import encoder_identity, extract_to_store

    env = DistEnv(rank=0, world_size=1, local_rank=0, device=device, backend=None)
    ident = encoder_identity(encoder, "Fundus", dataset.transform.transforms[0].size[0], "cls")
    _sync(device)
    t0 = time.perf_counter()
    extract_to_store(encoder, dataset, dst, ident, {"split": "test", "pass": 0}, env, batch, workers)
    _sync(device)
    return len(dataset) / (time.perf_counter() - t0)


@torch.no_grad()
def run_baseline(encoder, dataset, device, batch, workers, dst: Path) -> float:
    """The original's style: fp32 forward, then one ``pickle.dump`` per image."""
    from torch.utils.data import DataLoader

    from visionfm.engine.features import _collate

    depth = int(encoder.depth)
    ids = list(range(depth - 4, depth))
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers, collate_fn=_collate)
    _sync(device)
    t0 = time.perf_counter()
    for imgs, labels, extras in loader:
        outs = encoder.forward_intermediates_tokens(imgs.to(device), ids, norm=True)
        cls = [o[:, 0].cpu().numpy() for o in outs]
        for i, e in enumerate(extras):
            rel = e["rel_path"]
            path = dst / (rel.split(".")[0] + "_0.pickle")
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fh:
                pickle.dump({"img_name": rel, "feats_idx": ids, "feats": [c[i] for c in cls],
                             "labels": labels[i].numpy(), "img_path": e["img_path"]}, fh)
    _sync(device)
    return len(dataset) / (time.perf_counter() - t0)


@torch.no_grad()
def encoder_rate(encoder, device, size, batch, iters, warmup=2) -> float:
    depth = int(encoder.depth)
    ids = list(range(depth - 4, depth))
    x = torch.randn(batch, 3, size, size, device=device)
    amp = device.type == "cuda"
    for _ in range(warmup):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            encoder.forward_intermediates_tokens(x, ids, norm=True)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            encoder.forward_intermediates_tokens(x, ids, norm=True)
    _sync(device)
    return batch * iters / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="vit_base", choices=["vit_tiny", "vit_small", "vit_base", "vit_large"])
    ap.add_argument("--input_size", type=int, default=224)
    ap.add_argument("--image_size", type=int, default=512, help="side of the PNG files on disk")
    ap.add_argument("--num_images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--encoder_iters", type=int, default=10)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) else
                          ("cpu" if args.device == "auto" else args.device))
    from visionfm import load_encoder
    from visionfm.data.layouts import VFMDataset
    from visionfm.engine.features import eval_transform

    torch.manual_seed(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="vfm-extract-bench-"))
    try:
        data = _write_images(tmp / "data", args.num_images, args.image_size, args.seed)
        encoder = load_encoder("random", args.arch, "teacher", 16, args.input_size).to(device).eval()
        ds = VFMDataset(data, "test", transform=eval_transform(args.input_size, "Fundus", "bilinear"))
        # warm the page cache and the kernels once (not timed)
        encoder_rate(encoder, device, args.input_size, min(args.batch, 8), 1, warmup=1)
        base = run_baseline(encoder, ds, device, args.batch, args.workers, tmp / "pickles")
        ours = run_ours(encoder, ds, device, args.batch, args.workers, tmp / "store")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        enc = encoder_rate(encoder, device, args.input_size, args.batch, args.encoder_iters)
        peak = _peak_mb(device)
        if device.type == "cuda":
            name = torch.cuda.get_device_name(device)
        else:
            name = f"CPU ({os.cpu_count()} cores, {platform.machine()})"
        precision = "bf16 autocast" if device.type == "cuda" else "fp32"
        print(f"# extract throughput — {datetime.date.today().isoformat()}, torch {torch.__version__}")
        print(f"# {args.arch} @ {args.input_size}px, {args.num_images} PNG files of {args.image_size}px, "
              f"batch {args.batch}, workers {args.workers}")
        print("| device | ours img/s | baseline img/s (fp32 + pickle per image) | ratio | encoder-only img/s "
              f"({precision}) | peak memory MiB |")
        print("|---|---|---|---|---|---|")
        print(f"| {name} | {ours:.1f} | {base:.1f} | {ours / base:.2f}x | {enc:.1f} | {peak:.0f} |")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.exit(main())
