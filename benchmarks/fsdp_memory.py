#!/usr/bin/env python
"""Per-rank training state and step time of iBOT pretraining under DDP and under ``--fsdp``, measured in one run.

For each mode the script launches ``torchrun --nproc_per_node N`` on itself; every rank builds the real
:class:`~visionfm.pretrain.trainer.IBOTTrainer` from ``visionfm pretrain`` flags (a few synthetic images,
``--num_workers 0``), runs ``--steps`` training steps after one warm-up step, and reports

* the bytes this rank holds of student and teacher parameters, student gradients and optimizer state (for
  FSDP the local shards; a DDP rank holds all of it) — what sharding divides;
* peak memory: CUDA ``max_memory_allocated``; on CPU the process's maximum RSS (which also counts the Python
  runtime, libraries and activations, so its ratio is smaller than the state's);
* median seconds per step and images/s over all ranks.

Rank 0 prints one line per mode and a ratio line; ``--json`` writes the figures. gloo on CPU, NCCL on GPUs.
Never a timed test: the figures are printed, not asserted.

    python benchmarks/fsdp_memory.py --arch vit_base --nproc 2 --batch_size 4 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="vit_base", choices=["vit_tiny", "vit_small", "vit_base", "vit_large"])
    p.add_argument("--patch_size", type=int, default=16)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=4, help="images per process and step")
    p.add_argument("--nproc", type=int, default=2, help="processes (GPUs on a GPU machine)")
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--modes", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: a rank's output file
    p.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="ddp", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _nbytes(tensors) -> int:
    from visionfm.engine.fsdp import local_tensor

    return int(sum(local_tensor(t).numel() * t.element_size() for t in tensors if t is not None))


def _worker(a: argparse.Namespace) -> None:
    """One rank under torchrun: build the trainer, run the steps, write this rank's figures."""
    import torch

    from visionfm.cli.pretrain import config_from_argv
    from visionfm.engine.distributed import command_session
    from visionfm.pretrain.trainer import EpochMeters, IBOTTrainer

    flags = ["--data_path", str(Path(a.tmp) / "data"), "--modality", "Fundus", "--arch", a.arch,
             "--patch_size", str(a.patch_size), "--input_size", str(a.input_size), "--batch_size_per_gpu",
             str(a.batch_size), "--local_crops_number", "0", "--epochs", "1", "--warmup_epochs", "0",
             "--freeze_last_layer", "0", "--num_workers", "0", "--no_progress",
             "--output_dir", str(Path(a.tmp) / "runs"), "--name", a.mode, "--overwrite", "--device", a.device]
    if a.mode == "fsdp":
        flags.append("--fsdp")
    cfg = config_from_argv(flags)
    with command_session(cfg.device) as env:
        tr = IBOTTrainer(cfg, env)
        meters = EpochMeters.zeros(tr.device)
        batches = iter(tr._loader(0, 0))
        times = []
        for step in range(a.steps + 1):
            batch = next(batches)
            crops, masks = tr.prepare_batch(batch)
            if tr.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            tr.train_step(crops, masks, 0, step, meters)
            if tr.device.type == "cuda":
                torch.cuda.synchronize()
            if step:
                times.append(time.perf_counter() - t0)
        state = [v for st in tr.optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
        out = {
            "rank": env.rank, "world_size": env.world_size, "device": str(tr.device),
            "params_bytes": _nbytes(list(tr.student.parameters()) + list(tr.teacher.parameters())),
            "grads_bytes": _nbytes(p.grad for p in tr.student.parameters()),
            "optimizer_bytes": _nbytes(state),
            "step_s": float(np.median(times)),
            "peak_bytes": (torch.cuda.max_memory_allocated() if tr.device.type == "cuda"
                           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
        }
        tr.logger.close()
    Path(a.worker).with_suffix(f".rank{env.rank}.json").write_text(json.dumps(out))


def _write_images(root: Path, n: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "Fundus").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "Fundus" / f"{i:04d}.jpg")


def main(argv: list[str] | None = None) -> dict:
    a = _parse(argv)
    if a.worker:
        _worker(a)
        return {}
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if not torchrun:
        raise SystemExit("torchrun not found next to the interpreter")
    results: dict = {"arch": a.arch, "input_size": a.input_size, "batch_size_per_process": a.batch_size,
                     "nproc": a.nproc, "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        _write_images(Path(tmp) / "data", a.batch_size * a.nproc * (a.steps + 1), a.input_size)
        for mode in a.modes:
            stem = Path(tmp) / mode
            cmd = [torchrun, "--nproc_per_node", str(a.nproc), "--rdzv_backend", "c10d", "--rdzv_endpoint",
                   "127.0.0.1:0", __file__, "--worker", str(stem), "--tmp", tmp, "--mode", mode,
                   "--arch", a.arch, "--patch_size", str(a.patch_size), "--input_size", str(a.input_size),
                   "--batch_size", str(a.batch_size), "--steps", str(a.steps), "--device", a.device]
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{mode}: torchrun failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
            ranks = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob(f"{mode}.rank*.json"))]
            state = max(r["params_bytes"] + r["grads_bytes"] + r["optimizer_bytes"] for r in ranks)
            step = max(r["step_s"] for r in ranks)
            results["modes"][mode] = {
                "device": ranks[0]["device"], "state_bytes_per_rank": state,
                "params_bytes_per_rank": max(r["params_bytes"] for r in ranks),
                "optimizer_bytes_per_rank": max(r["optimizer_bytes"] for r in ranks),
                "peak_bytes_per_rank": max(r["peak_bytes"] for r in ranks),
                "step_s": step, "images_per_s": a.batch_size * a.nproc / step,
            }
            m = results["modes"][mode]
            gib = {k: m[k] / 2**30 for k in ("params_bytes_per_rank", "optimizer_bytes_per_rank",
                                              "peak_bytes_per_rank")}
            print(f"{mode:4s} {a.arch}/{a.patch_size} @ {a.input_size} px, {a.nproc} × {a.batch_size} images, "
                  f"{m['device']}: state {state / 2**30:.3f} GiB/rank (params {gib['params_bytes_per_rank']:.3f}, "
                  f"optimizer {gib['optimizer_bytes_per_rank']:.3f}), peak {gib['peak_bytes_per_rank']:.2f} GiB/rank, "
                  f"{step:.2f} s/step, {m['images_per_s']:.1f} images/s", flush=True)
    if {"ddp", "fsdp"} <= set(results["modes"]):
        d, f = results["modes"]["ddp"], results["modes"]["fsdp"]
        results["ratios"] = {"state_fsdp_over_ddp": f["state_bytes_per_rank"] / d["state_bytes_per_rank"],
                             "peak_fsdp_over_ddp": f["peak_bytes_per_rank"] / d["peak_bytes_per_rank"],
                             "speed_fsdp_over_ddp": f["images_per_s"] / d["images_per_s"]}
        r = results["ratios"]
        print(f"fsdp / ddp: state per rank {r['state_fsdp_over_ddp']:.2f}x, peak per rank "
              f"{r['peak_fsdp_over_ddp']:.2f}x, images/s {r['speed_fsdp_over_ddp']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
