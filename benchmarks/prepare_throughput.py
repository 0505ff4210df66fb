#!/usr/bin/env python
"""Pretraining input pipeline on full-size JPEGs vs on ``visionfm prepare``d copies, in one run.

1. Writes ``--num_images`` synthetic colour fundus photographs (``render_fundus``) of ``--img_size``
   px as JPEG (quality 95) into ``<tmp>/src/Fundus``.
2. Runs :func:`visionfm.data.prepare.prepare_images` on them (``--short_side``, default 448,
   ``--workers`` processes) and reports its images/s.
3. Measures the pretraining input pipeline — the real :class:`PretrainImages` (decode to RGB) +
   :class:`PretrainCropDataset` with :class:`IBOTAugmentation` (defaults: 2 global crops at 224,
   scale (0.32, 1), block masks) + ``collate_crops`` — on the originals and on the prepared copies:

   * **single process**: every image through ``dataset[(epoch, i)]`` in this process;
   * **DataLoader**: ``--workers`` worker processes, batch ``--batch``, the trainer's loader settings
     (``persistent_workers=False``, ``prefetch_factor=4``); images/s includes worker start-up, as in
     each pretraining epoch.

   and prints both rates and the ratio prepared / original.

Example: ``python benchmarks/prepare_throughput.py --num_images 128 --img_size 1024 --workers 2``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from visionfm.data.layouts import PretrainImages
from visionfm.data.prepare import prepare_images
from visionfm.data.synth.fundus import render_fundus
from visionfm.pretrain.augment import IBOTAugmentation
from visionfm.pretrain.data import PretrainCropDataset, collate_crops


def write_sources(root: Path, n: int, size: int, seed: int) -> None:
    folder = root / "Fundus"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(render_fundus(rng, size).image).save(folder / f"{i:06d}.jpg", quality=95)


def _dataset(root: Path) -> PretrainCropDataset:
    return PretrainCropDataset(PretrainImages(root, ["Fundus"]), IBOTAugmentation(), seed=0)


def single_process(root: Path, repeats: int) -> float:
    ds = _dataset(root)
    n = len(ds)
    ds[(0, 0)]  # warm-up (first-call allocations)
    t0 = time.perf_counter()
    for epoch in range(repeats):
        for i in range(n):
            ds[(epoch, i)]
    return repeats * n / (time.perf_counter() - t0)


def data_loader(root: Path, workers: int, batch: int, repeats: int) -> float:
    ds = _dataset(root)
    n = len(ds)
    seen = 0
    t0 = time.perf_counter()
    for epoch in range(repeats):
        keys = [(epoch, i) for i in range(n)]
        loader = DataLoader(ds, batch_size=batch, sampler=keys, num_workers=workers, collate_fn=collate_crops,
                            drop_last=False, persistent_workers=False,
                            prefetch_factor=4 if workers > 0 else None)
        for crops, _ in loader:
            seen += crops[0].shape[0]
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num_images", type=int, default=128)
    ap.add_argument("--img_size", type=int, default=1024)
    ap.add_argument("--short_side", type=int, default=448)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2, help="passes over the images per measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="keep the generated folders here instead of a temporary folder")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker; keeps the single-process figure per core

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="vfm_prepare_bench_"))
    src, dst = base / "src", base / "dst"
    try:
        t0 = time.perf_counter()
        write_sources(src, args.num_images, args.img_size, args.seed)
        src_bytes = sum(p.stat().st_size for p in (src / "Fundus").iterdir())
        print(f"{datetime.date.today()} {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}; "
              f"{args.num_images} fundus JPEGs at {args.img_size} px written in {time.perf_counter() - t0:.1f} s")
        summary = prepare_images(src, dst, "Fundus", short_side=args.short_side, workers=args.workers,
                                 overwrite=True)
        dst_bytes = sum(p.stat().st_size for p in (dst / "Fundus").iterdir())
        print(f"prepare (short side {args.short_side}, {args.workers} workers): "
              f"{summary['images_per_second']:.1f} images/s; "
              f"mean pixels {summary['mean_source_pixels'] / 1e6:.3f} MP "
              f"-> {summary['mean_output_pixels'] / 1e6:.3f} MP; "
              f"bytes/image {src_bytes / args.num_images / 1e3:.0f} kB -> {dst_bytes / args.num_images / 1e3:.0f} kB")

        rows = []
        for label, fn in (
            ("single process", lambda r: single_process(r, args.repeats)),
            (f"DataLoader, {args.workers} workers", lambda r: data_loader(r, args.workers, args.batch, args.repeats)),
        ):
            orig = fn(src)
            prep = fn(dst)
            rows.append((label, orig, prep))
        print("\npretraining input pipeline (PretrainImages + IBOTAugmentation, 2 global crops at 224), images/s")
        print(f"{'':<28}{'original':>12}{'prepared':>12}{'ratio':>8}")
        for label, orig, prep in rows:
            print(f"{label:<28}{orig:>12.1f}{prep:>12.1f}{prep / orig:>7.2f}x")
        print(f"(single process: {1e3 / rows[0][1]:.1f} ms/image original, {1e3 / rows[0][2]:.1f} ms/image prepared)")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
