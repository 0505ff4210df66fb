#!/usr/bin/env python
"""Throughput of iBOT pretraining, ours against the original VisionFM code, side by side in one run.

What is measured (every figure in one run, on whatever device is present):

* **ours, step** — :meth:`visionfm.pretrain.trainer.IBOTTrainer.train_step`, the real training step,
  on synthetic crops already on the device (masks from the real masker): steady-state images/s,
  model FLOPs of one step (``torch.utils.flop_counter.FlopCounterMode``), achieved TFLOP/s and peak
  memory (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the process's maximum RSS).
* **official, step** (``--official PATH``, a checkout of the original repository) — the original's
  own ``train_one_epoch`` from ``PATH/main_pretrain.py`` with its own ViT, ``iBOTHead``,
  ``iBOTLoss``, ``utils.clip_gradients``, ``utils.get_params_groups``, EMA loop, fp16 GradScaler
  (on GPU) and DDP wrapper (a one-process group), fed the same synthetic crops and masks. Only the
  original's optional imports that are not installed (wandb, munkres, miseval, einops) are stubbed;
  on a CPU-only machine its unconditional ``.cuda()`` / ``torch.cuda.synchronize()`` calls become
  no-ops (nothing else changes). ``--official_flash`` also times it with ``--use_flash``.
* **baseline, step** — without ``--official``: the same step run in the original's execution
  style on our modules (explicit softmax attention, fp16 + GradScaler, per-parameter loops, host
  reads every step); kept for machines without the original checkout.
* **pipeline** — per-image CPU cost (one process, ms per image) for each ``--jpeg_size``: the
  original's ``PretrainMask`` + ``DataAugmentationiBOT``; our PIL path (``--augment_on cpu``); our
  device path's worker half (reduced decode + crops + flips + masks) and its device half (batched
  photometry, per image). Then images/s of each loader with ``--workers`` processes.
* **end-to-end** — each loader feeding its own step (the original: ``train_one_epoch`` over its
  DataLoader).
* **data sources** (``--data folder shards``) — ours read from the JPEG folder and from the same
  files packed as tar shards (``visionfm.data.shards.pack_shards``, read by ``ShardImages`` through
  the shard index, as the trainer does): read cost per image, loader and end-to-end images/s side by
  side, with shards / folder.
* **DDP scaling** (``--ddp_scaling``, at least 2 CUDA devices) — our step under torchrun on 1, 2, 4,
  … and all local GPUs: images/s and efficiency (images/s at N / (N × images/s at 1)).

Never a timed unit test. The original repository is never vendored: it is only imported from PATH.
Run ``python benchmarks/pretrain_throughput.py --help`` for the flags; ``benchmarks/README.md``
explains every figure.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import gc
import importlib.util
import io
import json
import math
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from visionfm.cli.pretrain import config_from_argv
from visionfm.data.layouts.pretrain import PretrainImages
from visionfm.data.shards import ShardImages, pack_shards, parse_size
from visionfm.errors import ConfigError
from visionfm.pretrain.data import PretrainCropDataset
from visionfm.pretrain.masking import PretrainMasker
from visionfm.pretrain.optim import cancel_last_layer_grads, set_group_hparams
from visionfm.pretrain.trainer import EpochMeters, IBOTTrainer
from visionfm.pretrain.views import collate_views

__all__ = ["build_parser", "main", "run_benchmark", "set_fused_attention", "attention_modules"]

MODALITY = "Fundus"
# Figures the issue sets for an H100 (ViT-B/16, batch 128, 2 global crops at 224, no local crops).
TARGET_IMAGES_PER_S = 1400.0
TARGET_PEAK_GIB = 20.0
DATA_SOURCES = ("folder", "shards")  # --data: a folder of JPEG files, or the same files packed as tar shards


# -- command line ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Images/s, TFLOP/s and peak memory of the iBOT pretraining step (ours vs the "
        "original's execution style), plus the JPEG input pipeline and the end-to-end rate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--arch", default="vit_base", choices=["vit_tiny", "vit_small", "vit_base", "vit_large"])
    p.add_argument("--patch_size", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=128, help="images per step (each gives every crop)")
    p.add_argument("--input_size", type=int, default=224, help="global crop side")
    p.add_argument("--global_crops", type=int, default=2)
    p.add_argument("--local_crops", type=int, default=0)
    p.add_argument("--local_crops_size", type=int, default=96)
    p.add_argument("--steps", type=int, default=20, help="timed steps (and pipeline batches, rounded up)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="ours: auto = bf16 on GPUs that support it, fp32 on CPU (the baseline is always "
                        "fp16 on GPU, fp32 on CPU)")
    p.add_argument("--workers", type=int, default=8, help="DataLoader worker processes")
    p.add_argument("--jpeg_size", type=int, nargs="+", default=[1024],
                   help="side(s) of the synthetic JPEG files; per-image costs for each, loaders at the first")
    p.add_argument("--num_jpegs", type=int, default=256, help="distinct JPEG files written (per size)")
    p.add_argument("--cost_images", type=int, default=24, help="images timed for each per-image CPU cost")
    p.add_argument("--official", default=None, metavar="PATH",
                   help="a checkout of the original VisionFM repository: time its own step and pipeline too")
    p.add_argument("--official_flash", action="store_true", help="also time the original's step with --use_flash")
    p.add_argument("--skip_baseline", action="store_true", help="skip the emulated original-style step")
    p.add_argument("--skip_pipeline", action="store_true", help="also skips the end-to-end figures")
    p.add_argument("--skip_end_to_end", action="store_true")
    p.add_argument("--data", nargs="+", default=["folder"], choices=list(DATA_SOURCES),
                   help="where our loaders read the JPEGs from: 'folder' (one file per image) and/or 'shards' "
                        "(the same folder packed into tar shards by visionfm.data.shards.pack_shards, read "
                        "through the shard index); with both, every loader figure is given for each, side by side")
    p.add_argument("--shard_size", default="1GB",
                   help="--data shards: image bytes per shard (visionfm prepare --shard_size), e.g. 1GB, 64MiB")
    p.add_argument("--ddp_scaling", action="store_true",
                   help="also time our step under torchrun on 1..N local GPUs (DDP scaling efficiency); "
                        "skipped, with a line saying so, on machines with fewer than 2 CUDA devices")
    p.add_argument("--compile", action="store_true", help="torch.compile the student and teacher (ours only)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch intra-op CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp_dir", default=None, help="where the temporary JPEG folder and run folder go")
    # internal: one rank of a --ddp_scaling run (the script under torchrun); writes its figures to this file
    p.add_argument("--_ddp_worker", default=None, metavar="JSON", help=argparse.SUPPRESS)
    p.add_argument("--_ddp_data", default=None, metavar="PATH", help=argparse.SUPPRESS)
    return p


def _check_args(a: argparse.Namespace) -> None:
    if a.steps < 1 or a.warmup < 0 or a.batch_size < 1 or a.workers < 0:
        raise SystemExit("--steps and --batch_size must be ≥ 1, --warmup and --workers ≥ 0")
    if a.global_crops < 1 or a.local_crops < 0 or (a.global_crops == 1 and a.local_crops == 0):
        raise SystemExit("need --global_crops ≥ 2, or ≥ 1 with --local_crops ≥ 1 (the CLS loss needs two views)")
    if a.num_jpegs < 1 or min(a.jpeg_size) < 8 or a.cost_images < 1:
        raise SystemExit("--num_jpegs and --cost_images must be ≥ 1 and --jpeg_size ≥ 8")
    if len(set(a.data)) != len(a.data):
        raise SystemExit(f"--data {' '.join(a.data)}: name each source once")
    try:
        parse_size(a.shard_size)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    if a.official and not (Path(a.official) / "main_pretrain.py").is_file():
        raise SystemExit(f"--official {a.official}: no main_pretrain.py there (expected a checkout of the original "
                         "VisionFM repository, e.g. git clone https://github.com/ABILab-CUHK/VisionFM)")


def trainer_args(a: argparse.Namespace, data_path: Path, out_dir: Path, name: str, *,
                 precision: str, compile_: bool, workers: int, augment_on: str = "auto") -> Any:
    """The ``visionfm pretrain`` config (library defaults for everything the benchmark does not set)."""
    argv = [
        "--name", name, "--output_dir", str(out_dir), "--data_path", str(data_path), "--modality", MODALITY,
        "--arch", a.arch, "--patch_size", str(a.patch_size), "--input_size", str(a.input_size),
        "--batch_size_per_gpu", str(a.batch_size), "--global_crops_number", str(a.global_crops),
        "--local_crops_number", str(a.local_crops), "--local_crops_size", str(a.local_crops_size),
        "--num_workers", str(workers), "--precision", precision, "--device", a.device,
        "--seed", str(a.seed), "--no_progress", "--augment_on", augment_on,
    ]
    if compile_:
        argv.append("--compile")
    return config_from_argv(argv)


# -- synthetic JPEG folder ------------------------------------------------------------------------------
def write_jpegs(folder: Path, n: int, size: int, seed: int) -> list[Path]:
    """``n`` distinct fundus-like JPEGs (dark surround, bright field, optic disc, smooth texture).

    Smooth content keeps file sizes and decode times close to real fundus photographs; random
    noise would compress poorly and decode slower than real data.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lo = min(size, 128)  # colour and disc are smooth: compose them small, upsample once

    def radius(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / max(n - 1, 1)
        return yy, xx, np.sqrt((xx - 0.5) ** 2 + (yy - 0.5) ** 2)

    yy, xx, r = radius(lo)
    shade = np.clip(1.2 - 1.4 * r, 0.0, 1.0)[..., None]
    field = (radius(size)[2] < 0.47)[..., None]  # sharp edge of the camera aperture, at full size
    grain = rng.normal(0.0, 3.0, (size, size, 1)).astype(np.float32) * field
    paths = []
    for i in range(n):
        colours = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
        tex = np.asarray(colours.resize((lo, lo), Image.BICUBIC), np.float32)
        cx, cy = rng.uniform(0.3, 0.7, 2)
        disc = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / 0.004))[..., None]
        small = np.array([200.0, 90.0, 40.0], np.float32) * shade + (tex - 127.0) * 0.25 * shade + 120.0 * disc
        big = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        img = np.asarray(big, np.float32) * field + grain
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def fill_with_links(folder: Path, distinct: list[Path], total: int) -> None:
    """Grow ``folder`` to ``total`` files by hard-linking the distinct ones (copies if links fail).

    The sampler deals one batch to one worker, so an epoch must hold enough batches to keep every
    worker busy; links give that without writing (or decoding anything but) ``--num_jpegs`` files.
    """
    for j in range(len(distinct), total):
        src = distinct[j % len(distinct)]
        dst = folder / f"{j:06d}.jpg"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)


def pack_shard_folder(data_root: Path, dst: Path, shard_bytes: int) -> dict[str, Any]:
    """The JPEG folder packed as tar shards by the project's own writer (what ``visionfm prepare --format
    shards`` runs after down-sizing; here the files are packed as they are, so both sources hold the same
    bytes). Returns the shard figures."""
    t = time.perf_counter()
    index = pack_shards(data_root, dst, shard_bytes)
    shards = index["shardlist"]
    return {"pack_s": time.perf_counter() - t, "n_shards": len(shards), "shard_size_bytes": shard_bytes,
            "total_bytes": sum(int(s["filesize"]) for s in shards), "indexed_images": int(index["n_images"])}


# -- devices, timing, memory ----------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"CPU: {model} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    """CUDA: peak bytes allocated by tensors since the last reset. CPU: the process's maximum RSS
    (it never resets, so a later phase reports the maximum over all earlier phases too)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda_max_memory_allocated"
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return float("nan"), "unavailable"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return rss * scale / 2**30, "process_max_rss"


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# -- attention and op accounting ------------------------------------------------------------------------
def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every timm attention module (the ones with a ``fused_attn`` switch)."""
    return [m for m in model.modules() if hasattr(m, "fused_attn") and hasattr(m, "qkv")]


def set_fused_attention(model: torch.nn.Module, fused: bool) -> int:
    """Switch every timm ``Attention`` between fused SDPA and explicit softmax; returns the count."""
    mods = attention_modules(model)
    for m in mods:
        m.fused_attn = fused
    return len(mods)


class OpTally(TorchDispatchMode):
    """Counts the ATen ops a region dispatches (forward and backward), by op name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    def attention_ops(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self.counts.items()) if "attention" in k or "softmax" in k}


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, taught the CPU flash-attention kernels it does not know (the CUDA
    SDPA kernels are registered already), so fused and explicit attention count the same."""
    extra: dict[Any, Callable[..., int]] = {}
    fwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None:
        extra[fwd] = _cpu_sdpa_flops
    if bwd is not None:
        extra[bwd] = _cpu_sdpa_backward_flops
    return FlopCounterMode(display=False, custom_mapping=extra)


# -- inputs ---------------------------------------------------------------------------------------------
def synthetic_batch(
    trainer: IBOTTrainer, batch: int, epoch: int, seed: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Normal-noise crops and real block masks (the trainer's masker), already on the device."""
    aug = trainer.augmentation
    dev = trainer.device
    g = torch.Generator().manual_seed(seed)
    crops = [torch.randn(batch, 3, s, s, generator=g).to(dev) for s in aug.crop_sizes]
    rng = np.random.default_rng(seed)
    per_image = [aug.mask_fn(aug.crop_sizes, epoch, rng) for _ in range(batch)]
    masks = [torch.from_numpy(np.stack([m[c] for m in per_image])).to(dev) for c in range(len(aug.crop_sizes))]
    return crops, masks


# -- the original's execution style ---------------------------------------------------------------------
@torch.no_grad()
def loop_clip_gradients(model: torch.nn.Module, clip: float) -> list[float]:
    """The original ``utils.clip_gradients``: one norm, one host read and one branch per parameter."""
    norms = []
    for _, p in model.named_parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            norms.append(param_norm.item())
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
    return norms


def original_style_step(
    tr: IBOTTrainer, crops: list[torch.Tensor], masks: list[torch.Tensor], epoch: int, it: int
) -> float:
    """One iteration as ``main_pretrain.py`` runs it (reference §4.5), on the trainer's own modules.

    Same models, loss, optimizer and schedules as :meth:`IBOTTrainer.train_step`; what differs is
    the execution style: no compile, per-parameter clipping and EMA loops, and host reads of the loss
    (finiteness check) and of the logged statistics every step. Precision and attention are set up
    by the caller (fp16 + GradScaler on GPU, explicit softmax attention).
    """
    args = tr.args
    g = args.global_crops_number
    set_group_hparams(tr.optimizer, float(tr.lr_schedule[it]), float(tr.wd_schedule[it]),
                      freeze_last_layer=epoch < args.freeze_last_layer)
    crops = [c.to(tr.device, non_blocking=True) for c in crops]
    masks = [m.to(tr.device, non_blocking=True) for m in masks]
    with tr.autocast():
        # The original calls the teacher without no_grad; its parameters do not require grad, so no
        # graph is built either way.
        t_cls, t_patch, _ = tr.teacher(crops[:g])
        s_cls, s_patch, s_local = tr.student(crops[:g], masks[:g], crops[g:])
        out = tr.loss_fn(s_cls, s_patch, t_cls, t_patch, masks[:g], epoch, student_local_cls=s_local)
    loss = out["loss"]
    if not math.isfinite(loss.item()):
        raise RuntimeError(f"non-finite loss at iteration {it} (the original exits here)")
    b = crops[0].shape[0]
    acc = (t_cls[:b].argmax(-1) == s_cls[b : 2 * b].argmax(-1)).sum() / b if g > 1 else torch.zeros(())
    tr.optimizer.zero_grad()
    if tr.scaler is not None:
        tr.scaler.scale(loss).backward()
        if args.clip_grad:
            tr.scaler.unscale_(tr.optimizer)
            loop_clip_gradients(tr.student, args.clip_grad)
        cancel_last_layer_grads(tr.student, epoch, args.freeze_last_layer)
        tr.scaler.step(tr.optimizer)
        tr.scaler.update()
    else:
        loss.backward()
        if args.clip_grad:
            loop_clip_gradients(tr.student, args.clip_grad)
        cancel_last_layer_grads(tr.student, epoch, args.freeze_last_layer)
        tr.optimizer.step()
    with torch.no_grad():
        m = float(tr.momentum_schedule[it])
        for param_k, param_q in zip(tr.ema_teacher, tr.ema_student):
            param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
    # MetricLogger.update(...) in the original: every logged tensor is read on the host each step.
    logged = [loss.item()] + [v.item() for v in out.values()] + [float(acc.item())]
    return logged[0]


# -- measurement helpers --------------------------------------------------------------------------------
StepFn = Callable[[list[torch.Tensor], list[torch.Tensor], int, int], Any]


def time_steps(step: StepFn, crops, masks, device: torch.device, epoch: int, first_it: int, n: int) -> float:
    sync(device)
    t0 = time.perf_counter()
    for i in range(n):
        step(crops, masks, epoch, first_it + i)
    sync(device)
    return time.perf_counter() - t0


def count_step(step: StepFn, crops, masks, device: torch.device, epoch: int, it: int) -> tuple[int, dict[str, int]]:
    """FLOPs and attention-related ATen ops of one step (forward and backward)."""
    tally = OpTally()
    with flop_counter() as fc, tally:
        step(crops, masks, epoch, it)
        sync(device)
    return int(fc.get_total_flops()), tally.attention_ops()


@contextlib.contextmanager
def eager_modules(tr: IBOTTrainer):
    """Run the trainer's step on the eager modules (FLOP counting cannot see inside compiled code)."""
    saved = tr.student_fwd, tr.teacher_fwd
    tr.student_fwd, tr.teacher_fwd = tr.student, tr.teacher
    try:
        yield
    finally:
        tr.student_fwd, tr.teacher_fwd = saved


def precision_name(tr: IBOTTrainer) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[tr.amp_dtype]


def step_figures(batch: int, step_s: float, warmup_s: float, flops: int, peak: float, peak_kind: str) -> dict[str, Any]:
    """The figures every step column reports."""
    return {"images_per_s": batch / step_s, "step_ms": 1e3 * step_s, "warmup_s": warmup_s, "flops_per_step": flops,
            "tflops_per_s": flops / step_s / 1e12, "peak_memory_gib": peak, "peak_memory_kind": peak_kind}


def time_loader(tr: IBOTTrainer, epoch: int, n_batches: int, consume: Callable[[Any, Any, int], Any] | None) -> float:
    """Seconds to pull ``n_batches`` from the trainer's loader (worker start-up included, as at the
    start of every training epoch) and put them on the device as the step receives them (the
    device path runs its batched photometry here), optionally running ``consume`` on each batch."""
    loader = tr._loader(epoch, 0)  # the trainer's own DataLoader: workers, pinning, prefetch
    sync(tr.device)
    t0 = time.perf_counter()
    batches = iter(loader)
    for i in range(n_batches):
        crops, masks = tr.prepare_batch(next(batches))
        if consume is not None:
            consume(crops, masks, i)
    sync(tr.device)
    elapsed = time.perf_counter() - t0
    del batches  # shuts the workers down
    return elapsed


def _it(tr: IBOTTrainer, epoch: int, i: int) -> int:
    return (epoch * tr.iters_per_epoch + i) % len(tr.lr_schedule)


# -- the original code, imported from --official PATH ----------------------------------------------------
# Optional imports of the original that the pretraining step never uses; stubbed only when missing.
_OFFICIAL_STUBS = ("wandb", "munkres", "miseval", "einops")


class _Stub(types.ModuleType):
    """Stands in for a missing optional dependency; anything taken from it fails when called."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)

        def unavailable(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"{self.__name__}.{attr} is stubbed by the benchmark (package not installed)")

        return unavailable


def import_official(path: str) -> types.SimpleNamespace:
    """Import the original's ``main_pretrain``, ``utils``, ``loader`` and ``models`` from ``path``."""
    root = str(Path(path).resolve())
    for name in ("main_pretrain", "utils", "loader", "models"):
        mod = sys.modules.get(name)
        if mod is not None and not str(getattr(mod, "__file__", "") or "").startswith(root):
            raise SystemExit(
                f"a module named {name!r} is already imported from elsewhere; run the benchmark in a fresh process"
            )
    stubbed = []
    for name in _OFFICIAL_STUBS:
        if importlib.util.find_spec(name) is None:
            sys.modules[name] = _Stub(name)
            stubbed.append(name)
    sys.path.insert(0, root)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import loader as o_loader  # noqa: PLC0415 - from PATH
            import main_pretrain as o_main  # noqa: PLC0415
            import models as o_models  # noqa: PLC0415
            import utils as o_utils  # noqa: PLC0415
            from models.head import iBOTHead  # noqa: PLC0415
    finally:
        sys.path.remove(root)
    commit = ""
    with contextlib.suppress(Exception):
        import subprocess  # noqa: PLC0415

        git = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        commit = git.stdout.strip()
    return types.SimpleNamespace(main=o_main, utils=o_utils, loader=o_loader, models=o_models, head=iBOTHead,
                                 stubbed=stubbed, path=root, commit=commit)


@contextlib.contextmanager
def one_process_group(device: torch.device):
    """The original always runs under a process group (its loss all-reduces): one of world size 1."""
    import torch.distributed as dist  # noqa: PLC0415

    if dist.is_initialized():
        yield
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def official_on_cpu(o: types.SimpleNamespace, device: torch.device):
    """On a CPU-only machine, the original's unconditional CUDA calls become no-ops (nothing else)."""
    if device.type == "cuda":
        yield
        return
    saved = torch.Tensor.cuda, torch.cuda.synchronize, o.utils.SmoothedValue.synchronize_between_processes
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    torch.cuda.synchronize = lambda *args, **kwargs: None  # type: ignore[assignment]
    # it builds a device='cuda' tensor; with one process there is nothing to synchronise
    o.utils.SmoothedValue.synchronize_between_processes = lambda self: None
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.cuda.synchronize, o.utils.SmoothedValue.synchronize_between_processes = saved


class OfficialRun:
    """The original's student, teacher, loss, optimizer, scaler and schedules, built as
    ``train_encoder`` builds them (README defaults; ``--shared_head false`` as its parser default)."""

    def __init__(self, o: types.SimpleNamespace, a: argparse.Namespace, device: torch.device, n_iters: int,
                 use_flash: bool) -> None:
        from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

        self.o, self.device = o, device
        fp16 = device.type == "cuda"  # --use_fp16 true (the default); the original has no CPU mode
        self.args = types.SimpleNamespace(
            global_crops_number=a.global_crops, use_masked_im_modeling=True, clip_grad=3.0, freeze_last_layer=3,
            epochs=100, local_crops_number=a.local_crops,
        )
        kw = dict(img_size=[a.input_size], patch_size=a.patch_size, return_all_tokens=True, use_flash=use_flash)
        with contextlib.redirect_stdout(io.StringIO()):
            s_vit = o.models.__dict__[a.arch](drop_path_rate=0.1, masked_im_modeling=True, **kw)
            t_vit = o.models.__dict__[a.arch](**kw)
        dim = s_vit.embed_dim
        student = o.utils.MultiCropWrapper(s_vit, o.head(dim, 8192, patch_out_dim=8192, norm=None, act="gelu",
                                                           norm_last_layer=True, shared_head=False))
        teacher = o.utils.MultiCropWrapper(t_vit, o.head(dim, 8192, patch_out_dim=8192, norm=None, act="gelu",
                                                           shared_head=True))
        student, teacher = student.to(device), teacher.to(device)
        device_ids = [device.index or 0] if device.type == "cuda" else None
        self.student = DistributedDataParallel(student, device_ids=device_ids)
        self.teacher = teacher
        teacher.load_state_dict(self.student.module.state_dict(), strict=False)
        for p in teacher.parameters():
            p.requires_grad = False
        self.loss = o.main.iBOTLoss(8192, 8192, a.global_crops, a.local_crops, 0.07, 0.04, 0.04, 0.07, 30, 100,
                                    lambda1=1.0, lambda2=1.0, mim_start_epoch=0).to(device)
        self.optimizer = torch.optim.AdamW(o.utils.get_params_groups(self.student))
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None
        batch = a.batch_size
        u = o.utils
        self.lr = u.cosine_scheduler(7.5e-5 * batch / 256.0, 2e-6, 100, n_iters, warmup_epochs=50)
        self.wd = u.cosine_scheduler(0.04, 0.4, 100, n_iters)
        self.momentum = u.cosine_scheduler(0.996, 1, 100, n_iters)

    def epoch(self, loader: Any, epoch: int) -> None:
        """One call of the original ``train_one_epoch`` over ``loader`` (its console output dropped)."""
        with official_on_cpu(self.o, self.device), contextlib.redirect_stdout(io.StringIO()):
            self.o.main.train_one_epoch(self.student, self.teacher, self.teacher, self.loss, loader, self.optimizer,
                                        self.lr, self.wd, self.momentum, epoch, self.scaler, self.args)

    def parameter_modules(self) -> list[torch.nn.Module]:
        return [self.student.module, self.teacher]


def _official_dataset(o: types.SimpleNamespace, a: argparse.Namespace, data_root: Path) -> Any:
    """The original's ``PretrainMask`` + ``DataAugmentationiBOT`` over ``data_root/Fundus`` (defaults)."""
    with contextlib.redirect_stdout(io.StringIO()):
        transform = o.main.DataAugmentationiBOT((0.32, 1.0), (0.05, 0.4), a.global_crops, a.local_crops,
                                                a.input_size, modality=MODALITY, scheme="single")
        return o.loader.PretrainMask(root=str(data_root), transform=transform, patch_size=a.patch_size, pred_ratio=0.3,
                                     pred_ratio_var=0.0, pred_aspect_ratio=(0.3, 1 / 0.3), pred_shape="block",
                                     modality=MODALITY, pred_start_epoch=0)


def _official_loader(o: types.SimpleNamespace, a: argparse.Namespace, data_root: Path, device: torch.device) -> Any:
    """As ``train_encoder`` builds it (a shuffling sampler, drop_last, pinned memory)."""
    ds = _official_dataset(o, a, data_root)
    return torch.utils.data.DataLoader(ds, batch_size=a.batch_size, shuffle=True, num_workers=a.workers,
                                       pin_memory=device.type == "cuda", drop_last=True)


class _Limited:
    """The first ``n`` batches of a DataLoader, with ``len`` = n (``train_one_epoch`` reads it)."""

    def __init__(self, loader: Any, n: int) -> None:
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= self.n:
                break
            yield batch


def _measure_official_step(o: types.SimpleNamespace, a: argparse.Namespace, tr_device: torch.device,
                           use_flash: bool) -> dict[str, Any]:
    B = a.batch_size
    dev = tr_device
    n_iters = a.warmup + a.steps + 2
    run = OfficialRun(o, a, dev, n_iters, use_flash)
    g = torch.Generator().manual_seed(a.seed)
    sizes = [a.input_size] * a.global_crops + [96] * a.local_crops  # the original's local size is fixed at 96
    images = [torch.randn(B, 3, s, s, generator=g).to(dev) for s in sizes]
    masker = PretrainMasker(0.3, 0.0, 0, "block", a.patch_size)
    rng = np.random.default_rng(a.seed)
    per_image = [masker.make_masks(sizes, 0, rng) for _ in range(B)]
    masks = [torch.from_numpy(np.stack([m[c] for m in per_image])).to(dev) for c in range(len(sizes))]
    labels = torch.full((B,), -1, dtype=torch.long)
    batch = (images, labels, masks)
    epoch = 3  # past the last-layer freeze, as ours
    try:
        reset_peak(dev)
        t = time.perf_counter()
        run.epoch([batch] * max(a.warmup, 1), epoch)
        sync(dev)
        warmup_s = time.perf_counter() - t
        with flop_counter() as fc:
            run.epoch([batch], epoch)
            sync(dev)
        sync(dev)
        t = time.perf_counter()
        run.epoch([batch] * a.steps, epoch)
        sync(dev)
        step_s = (time.perf_counter() - t) / a.steps
        peak, peak_kind = peak_memory_gib(dev)
        flops = int(fc.get_total_flops())
        return {
            "precision": "fp16" if run.scaler is not None else "fp32",
            "use_flash": use_flash,
            **step_figures(B, step_s, warmup_s, flops, peak, peak_kind),
        }
    finally:
        del run
        free_memory(dev)


# -- per-image CPU cost of each input pipeline ------------------------------------------------------------
def _ms_per_image(get: Callable[[int], Any], n: int) -> float:
    """Mean ms per sample on one thread, as in a DataLoader worker (torch sets 1 thread there)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        get(0)  # warm caches and lazy state (normalisers, mask generators)
        t = time.perf_counter()
        for i in range(1, n + 1):
            get(i)
        return 1e3 * (time.perf_counter() - t) / n
    finally:
        torch.set_num_threads(threads)


def _photometric_ms_per_image(tr: IBOTTrainer, ds: PretrainCropDataset, batch: int) -> float:
    """Device half of the device path: batched photometry over one collated batch, per image."""
    vb = collate_views([ds[(0, i)] for i in range(batch)])
    dev = tr.device
    photometric = tr.photometric_call
    modality = vb.modality.to(dev)
    crops = [c.to(dev) for c in vb.crops]
    params = [p.to(dev) for p in vb.params]
    for _ in range(2):  # warm-up (and compilation, with --compile)
        [photometric(c, p, modality) for c, p in zip(crops, params)]
    sync(dev)
    reps = 3
    t = time.perf_counter()
    for _ in range(reps):
        [photometric(c, p, modality) for c, p in zip(crops, params)]
    sync(dev)
    return 1e3 * (time.perf_counter() - t) / (reps * batch)


def _pipeline_costs(a: argparse.Namespace, folders: dict[int, Path], tr_cpu: IBOTTrainer, tr_dev: IBOTTrainer,
                    o: types.SimpleNamespace | None) -> dict[str, Any]:
    """ms per image in this one process, for each JPEG size (no workers: CPU cost, not throughput)."""
    out: dict[str, Any] = {}
    n = a.cost_images
    for size, root in folders.items():
        row: dict[str, Any] = {}
        if o is not None:
            ods = _official_dataset(o, a, root)
            row["official_ms"] = _ms_per_image(lambda i, ods=ods: ods[i % len(ods)], n)
        for name, tr in (("ours_cpu_path_ms", tr_cpu), ("ours_device_path_worker_ms", tr_dev)):
            images = PretrainImages(root, [MODALITY], min_pixels=tr.images.min_pixels)
            ds = PretrainCropDataset(images, tr.augmentation, a.seed)
            row[name] = _ms_per_image(lambda i, ds=ds, images=images: ds[(0, i % len(images))], n)
            if tr is tr_dev:
                row["ours_device_path_photometric_ms"] = _photometric_ms_per_image(
                    tr, ds, min(a.batch_size, len(images))
                )
                probe = images[0][0]
                row["decoded_size"] = list(probe.size)
        if o is not None:
            row["device_worker_over_official"] = row["ours_device_path_worker_ms"] / row["official_ms"]
            row["cpu_path_over_official"] = row["ours_cpu_path_ms"] / row["official_ms"]
        out[str(size)] = row
    return out


# -- the benchmark --------------------------------------------------------------------------------------
def run_benchmark(a: argparse.Namespace) -> dict[str, Any]:
    _check_args(a)
    threads = torch.get_num_threads()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    tmp_root = Path(tempfile.mkdtemp(prefix="vfm_bench_", dir=a.tmp_dir))
    try:
        return _run(a, tmp_root)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp_root, ignore_errors=True)


def _run(a: argparse.Namespace, tmp_root: Path) -> dict[str, Any]:
    B = a.batch_size
    w = max(a.workers, 1)
    # Pipeline and end-to-end pull whole rounds of batches (one batch per worker per round).
    n_batches = w * math.ceil(max(a.steps + a.warmup, 1) / w)
    o = import_official(a.official) if a.official else None
    folders: dict[int, Path] = {}
    jpeg_kib: dict[str, float] = {}
    t = time.perf_counter()
    for k, size in enumerate(a.jpeg_size):
        root = tmp_root / f"data{size}"
        folder = root / MODALITY
        if a.skip_pipeline:  # the trainer still needs a folder that fills one batch
            write_jpegs(folder, min(a.num_jpegs, B), min(size, 64), a.seed)
            fill_with_links(folder, sorted(folder.iterdir()), B)
            folders[size] = root
            break
        distinct = write_jpegs(folder, a.num_jpegs, size, a.seed + k)
        jpeg_kib[str(size)] = sum(p.stat().st_size for p in distinct) / len(distinct) / 1024
        if k == 0:  # the loaders read the first size: enough files for every batch
            fill_with_links(folder, distinct, max(a.num_jpegs, n_batches * B))
        folders[size] = root
    jpeg_write_s = time.perf_counter() - t
    data_root = next(iter(folders.values()))
    # --data: where our loaders read the first size's JPEGs from, in the order asked
    sources = {name: (data_root if name == "folder" else tmp_root / "shards") for name in a.data}
    shard_info: dict[str, Any] = {}
    if "shards" in sources and not a.skip_pipeline:
        shard_info = pack_shard_folder(data_root, sources["shards"], parse_size(a.shard_size))

    res: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "config": {k: v for k, v in vars(a).items() if k not in ("json", "tmp_dir")},
    }
    if o is not None:
        res["official_source"] = {"path": o.path, "commit": o.commit, "stubbed_imports": o.stubbed}
    # Each phase builds its own trainer and drops it on return, so the baseline's peak memory
    # (CUDA) does not include ours.
    dev = _measure_ours(a, data_root, tmp_root, res)
    free_memory(dev)
    if not a.skip_pipeline:
        _measure_pipelines(a, folders, sources, tmp_root, n_batches, o, res)
        if shard_info:
            res["data_sources"]["shards"].update(shard_info)
        res["pipeline"]["mean_jpeg_kib"] = jpeg_kib
        res["pipeline"]["jpeg_write_s"] = jpeg_write_s
        free_memory(dev)
    if not a.skip_baseline:
        _measure_baseline(a, data_root, tmp_root, res)
        res["ratio_ours_over_baseline"] = res["ours"]["images_per_s"] / res["baseline"]["images_per_s"]
        free_memory(dev)
    if o is not None:
        with one_process_group(dev):
            res["official"] = _measure_official_step(o, a, dev, use_flash=False)
            if a.official_flash:
                res["official_flash"] = _measure_official_step(o, a, dev, use_flash=True)
        res["ratio_ours_over_official"] = res["ours"]["images_per_s"] / res["official"]["images_per_s"]
        if "official_flash" in res:
            res["ratio_ours_over_official_flash"] = res["ours"]["images_per_s"] / res["official_flash"]["images_per_s"]

    if a.ddp_scaling:
        n_gpus = torch.cuda.device_count() if a.device != "cpu" and torch.cuda.is_available() else 0
        if n_gpus < 2:
            res["ddp_scaling"] = {"skipped": f"needs at least 2 CUDA devices, found {n_gpus}"}
        else:
            sizes = sorted({*(2**i for i in range(n_gpus.bit_length()) if 2**i <= n_gpus), n_gpus})
            res["ddp_scaling"] = measure_ddp_scaling(a, data_root, tmp_root, sizes)

    if dev.type == "cuda" and (a.arch, B, a.input_size, a.patch_size, a.global_crops, a.local_crops) == (
        "vit_base", 128, 224, 16, 2, 0
    ):
        res["targets"] = {
            "images_per_s": TARGET_IMAGES_PER_S,
            "peak_memory_gib": TARGET_PEAK_GIB,
            "met": res["ours"]["images_per_s"] >= TARGET_IMAGES_PER_S
            and res["ours"]["peak_memory_gib"] <= TARGET_PEAK_GIB,
        }
    return res


def _measure_ours(a: argparse.Namespace, data_root: Path, tmp_root: Path, res: dict[str, Any]) -> torch.device:
    """The real ``IBOTTrainer.train_step`` on synthetic device tensors. Fills ``res``; returns the device."""
    B = a.batch_size
    targs = trainer_args(a, data_root, tmp_root / "runs", "ours", precision=a.precision,
                         compile_=a.compile, workers=a.workers)
    tr = IBOTTrainer(targs)
    dev = tr.device
    res["device"] = device_name(dev)
    res["device_type"] = dev.type
    epoch = targs.freeze_last_layer  # past the last-layer freeze: the regime of most of training
    crops, masks = synthetic_batch(tr, B, epoch, a.seed)
    meters = EpochMeters.zeros(dev)

    def step(c, m, e, it):
        return tr.train_step(c, m, e, it, meters)

    try:
        reset_peak(dev)
        t = time.perf_counter()
        time_steps(step, crops, masks, dev, epoch, _it(tr, epoch, 0), a.warmup)
        warmup_s = time.perf_counter() - t
        with eager_modules(tr):
            flops, ops = count_step(step, crops, masks, dev, epoch, _it(tr, epoch, a.warmup))
        elapsed = time_steps(step, crops, masks, dev, epoch, _it(tr, epoch, a.warmup + 1), a.steps)
        peak, peak_kind = peak_memory_gib(dev)
        tr._check_nonfinite(0)
        step_s = elapsed / a.steps
        mods = attention_modules(tr.student) + attention_modules(tr.teacher)
        res["ours"] = {
            "precision": precision_name(tr),
            "compiled": bool(a.compile),
            **step_figures(B, step_s, warmup_s, flops, peak, peak_kind),
            "attention_modules": len(mods),
            "fused_attention_modules": sum(bool(m.fused_attn) for m in mods),
            "attention_ops": ops,
            "skipped_steps": tr.skipped_steps,
            "patch_tokens_projected": tr.k_select,
        }
    finally:
        tr.logger.close()
    return dev


def _source_images(root: Path, min_pixels: int) -> PretrainImages:
    """A fresh reader of one ``--data`` source, as the trainer picks it (a shard index, else a folder)."""
    if (root / "shards.json").is_file():
        return ShardImages(root, [MODALITY], min_pixels=min_pixels)
    return PretrainImages(root, [MODALITY], min_pixels=min_pixels)


def _read_costs(root: Path, min_pixels: int, n: int) -> dict[str, Any]:
    """ms per image, one thread, in this process: the encoded bytes alone (a file read, or a member of a
    memory-mapped shard), then the reader's full sample (bytes + the trainer's reduced decode)."""
    images = _source_images(root, min_pixels)
    m = len(images)
    if isinstance(images, ShardImages):
        def raw(i: int) -> bytes:
            (si, j), _ = images.samples[i % m]
            return images._member(images._reader(si)[j], "jpg")
    else:
        def raw(i: int) -> bytes:
            return images.samples[i % m][0].read_bytes()
    return {"read_ms": _ms_per_image(raw, n), "read_decode_ms": _ms_per_image(lambda i: images[i % m], n),
            "decode_min_pixels": min_pixels}


def _step_argv(a: argparse.Namespace) -> list[str]:
    """The flags that define the step, to hand to the ranks of a --ddp_scaling run."""
    argv = ["--arch", a.arch, "--patch_size", str(a.patch_size), "--batch_size", str(a.batch_size),
            "--input_size", str(a.input_size), "--global_crops", str(a.global_crops), "--local_crops",
            str(a.local_crops), "--local_crops_size", str(a.local_crops_size), "--steps", str(a.steps),
            "--warmup", str(a.warmup), "--precision", a.precision, "--device", a.device, "--seed", str(a.seed),
            "--threads", str(a.threads)]
    return argv + (["--compile"] if a.compile else [])


def measure_ddp_scaling(a: argparse.Namespace, data_root: Path, tmp_root: Path,
                        world_sizes: list[int]) -> dict[str, Any]:
    """Our step under ``torchrun --standalone --nproc_per_node K`` for each K (one process per local GPU;
    ``IBOTTrainer`` wraps the student in DDP): images/s over all ranks (K × batch per step) and the
    scaling efficiency, images/s at K / (K × images/s at 1). A rank that fails fails the run."""
    import subprocess  # noqa: PLC0415

    runs: dict[str, Any] = {}
    for k in world_sizes:
        out = tmp_root / f"ddp{k}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={k}",
               str(Path(__file__).resolve()), *_step_argv(a), "--tmp_dir", str(tmp_root),
               "--_ddp_worker", str(out), "--_ddp_data", str(data_root)]
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"--ddp_scaling: torchrun with {k} process(es) failed (exit {done.returncode}):\n"
                               + (done.stderr or done.stdout)[-4000:])
        runs[str(k)] = json.loads(out.read_text(encoding="utf-8"))
    one = runs[str(world_sizes[0])]["images_per_s"] / world_sizes[0]
    for k, r in runs.items():
        r["efficiency"] = r["images_per_s"] / (int(k) * one)
    return {"world_sizes": world_sizes, "runs": runs}


def _ddp_worker(a: argparse.Namespace) -> None:
    """One rank of a --ddp_scaling run: the trainer's own DDP step on synthetic crops; rank 0 writes."""
    import torch.distributed as dist  # noqa: PLC0415

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    out = Path(a._ddp_worker)
    targs = trainer_args(a, Path(a._ddp_data), out.parent / "runs", f"ddp{os.environ.get('WORLD_SIZE', '1')}",
                         precision=a.precision, compile_=a.compile, workers=0)
    tr = IBOTTrainer(targs)
    dev, world = tr.device, tr.env.world_size
    epoch = targs.freeze_last_layer
    crops, masks = synthetic_batch(tr, a.batch_size, epoch, a.seed + tr.env.rank)
    meters = EpochMeters.zeros(dev)

    def step(c, m, e, it):
        return tr.train_step(c, m, e, it, meters)

    try:
        time_steps(step, crops, masks, dev, epoch, _it(tr, epoch, 0), a.warmup)
        if dist.is_initialized():
            dist.barrier()
        elapsed = time_steps(step, crops, masks, dev, epoch, _it(tr, epoch, a.warmup), a.steps)
        if dist.is_initialized():  # the slowest rank sets the pace
            t = torch.tensor([elapsed], device=dev)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            elapsed = float(t.item())
        if tr.env.is_main:
            step_s = elapsed / a.steps
            out.write_text(json.dumps({"world_size": world, "device": device_name(dev), "step_ms": 1e3 * step_s,
                                       "images_per_s": world * a.batch_size / step_s}), encoding="utf-8")
    finally:
        tr.logger.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def _measure_pipelines(a: argparse.Namespace, folders: dict[int, Path], sources: dict[str, Path], tmp_root: Path,
                       n_batches: int, o: types.SimpleNamespace | None, res: dict[str, Any]) -> None:
    """Per-image costs (every size), then for each ``--data`` source its read cost, loader images/s and
    end-to-end images/s (the first size). The first source fills the ``pipeline`` / ``end_to_end`` figures
    that are compared with the original (which reads the folder)."""
    data_root = next(iter(folders.values()))
    B = a.batch_size
    pipe: dict[str, Any] = {"workers": a.workers, "batches": n_batches, "distinct_jpegs": a.num_jpegs,
                            "jpeg_sizes": list(a.jpeg_size), "loader_jpeg_size": a.jpeg_size[0],
                            "loader_data": a.data[0]}
    by_source: dict[str, dict[str, Any]] = {}
    dev = torch.device("cpu")
    for k, (source, root) in enumerate(sources.items()):
        trainers = {}
        for path in ("cpu", "device"):
            targs = trainer_args(a, root, tmp_root / "runs", f"ours_{path}_{source}", precision=a.precision,
                                 compile_=a.compile, workers=a.workers, augment_on=path)
            trainers[path] = IBOTTrainer(targs)
        tr_cpu, tr_dev = trainers["cpu"], trainers["device"]
        dev = tr_cpu.device
        epoch = tr_cpu.args.freeze_last_layer
        row: dict[str, Any] = {"reader": type(tr_cpu.images).__name__, "n_images": len(tr_cpu.images),
                               "images_read": n_batches * B}
        try:
            if k == 0:
                pipe["per_image"] = _pipeline_costs(a, folders, tr_cpu, tr_dev, o)
            row.update(_read_costs(root, tr_cpu.images.min_pixels, a.cost_images))
            row["loader"] = {f"ours_{path}_path_images_per_s": n_batches * B / time_loader(tr, epoch, n_batches, None)
                             for path, tr in trainers.items()}
            if not a.skip_end_to_end:
                row["end_to_end"] = {}
                for path, tr in trainers.items():
                    meters = EpochMeters.zeros(dev)

                    def fed_step(c, m, i, tr=tr, meters=meters, epoch=epoch):
                        tr.train_step(c, m, epoch, _it(tr, epoch, i), meters)

                    row["end_to_end"][f"ours_{path}_path_images_per_s"] = (
                        n_batches * B / time_loader(tr, epoch, n_batches, fed_step))
        finally:
            for tr in trainers.values():
                tr.logger.close()
            del trainers, tr_cpu, tr_dev
            free_memory(dev)
        by_source[source] = row
    first = by_source[a.data[0]]
    pipe.update(first["loader"])
    e2e: dict[str, Any] = {"batches": n_batches, "workers": a.workers, "data": a.data[0],
                           **first.get("end_to_end", {})}
    if o is not None:
        loader = _official_loader(o, a, data_root, dev)
        sync(dev)
        t = time.perf_counter()
        pulled = 0
        for batch in loader:
            pulled += 1
            if dev.type == "cuda":  # what train_one_epoch does with each batch before the step
                [im.cuda(non_blocking=True) for im in batch[0]]
            if pulled == n_batches:
                break
        sync(dev)
        pipe["official_images_per_s"] = pulled * B / (time.perf_counter() - t)
        if not a.skip_end_to_end:
            with one_process_group(dev):
                run = OfficialRun(o, a, dev, n_batches, use_flash=False)
                sync(dev)
                t = time.perf_counter()
                run.epoch(_Limited(_official_loader(o, a, data_root, dev), n_batches), epoch)
                sync(dev)
                e2e["official_images_per_s"] = n_batches * B / (time.perf_counter() - t)
                del run
                free_memory(dev)
        for path in ("cpu", "device"):
            pipe[f"ours_{path}_over_official"] = pipe[f"ours_{path}_path_images_per_s"] / pipe["official_images_per_s"]
            if "official_images_per_s" in e2e and f"ours_{path}_path_images_per_s" in e2e:
                e2e[f"ours_{path}_over_official"] = e2e[f"ours_{path}_path_images_per_s"] / e2e["official_images_per_s"]
    res["pipeline"] = pipe
    if not a.skip_end_to_end:
        res["end_to_end"] = e2e
    res["data_sources"] = by_source
    if "folder" in by_source and "shards" in by_source:
        f, sh = by_source["folder"], by_source["shards"]
        ratio = {"read_ms": sh["read_ms"] / f["read_ms"], "read_decode_ms": sh["read_decode_ms"] / f["read_decode_ms"]}
        for part in ("loader", "end_to_end"):
            for key, value in f.get(part, {}).items():
                ratio[f"{part}_{key}"] = sh[part][key] / value
        res["ratio_shards_over_folder"] = ratio


def _measure_baseline(a: argparse.Namespace, data_root: Path, tmp_root: Path, res: dict[str, Any]) -> None:
    """The same step in the original's execution style (see :func:`original_style_step`)."""
    B = a.batch_size
    targs = trainer_args(a, data_root, tmp_root / "runs", "baseline", precision="fp16", compile_=False, workers=0)
    tr = IBOTTrainer(targs)
    dev = tr.device
    # the original's optimizer: torch's unfused AdamW over the same groups
    groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach", "lr")} for g in tr.optimizer.param_groups]
    tr.optimizer = torch.optim.AdamW(groups, lr=0.0, foreach=False)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark
    # The original never enabled TF32 matmuls (the trainer does) and set cudnn.benchmark=True.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    try:
        n_attn = set_fused_attention(tr.student, False) + set_fused_attention(tr.teacher, False)
        epoch = targs.freeze_last_layer
        crops, masks = synthetic_batch(tr, B, epoch, a.seed)

        def step(c, m, e, it):
            return original_style_step(tr, c, m, e, it)

        reset_peak(dev)
        t = time.perf_counter()
        time_steps(step, crops, masks, dev, epoch, _it(tr, epoch, 0), a.warmup)
        warmup_s = time.perf_counter() - t
        flops, ops = count_step(step, crops, masks, dev, epoch, _it(tr, epoch, a.warmup))
        elapsed = time_steps(step, crops, masks, dev, epoch, _it(tr, epoch, a.warmup + 1), a.steps)
        peak, peak_kind = peak_memory_gib(dev)
        step_s = elapsed / a.steps
        mods = attention_modules(tr.student) + attention_modules(tr.teacher)
        res["baseline"] = {
            "precision": precision_name(tr),
            **step_figures(B, step_s, warmup_s, flops, peak,
                           peak_kind + ("" if dev.type == "cuda" else " (max over the whole process so far)")),
            "attention_modules": n_attn,
            "fused_attention_modules": sum(bool(m.fused_attn) for m in mods),
            "attention_ops": ops,
            "grad_scaler": tr.scaler is not None,
        }
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = saved
        tr.logger.close()


# -- report ---------------------------------------------------------------------------------------------
def format_table(res: dict[str, Any]) -> str:
    c = res["config"]
    o = res["ours"]
    off = res.get("official")
    offf = res.get("official_flash")
    b = res.get("baseline")

    def num(x: float | None, fmt: str = "{:,.1f}") -> str:
        return fmt.format(x) if x is not None and math.isfinite(x) else "n/a"

    cols = [("ours", o)]
    if off:
        cols.append(("original", off))
    if offf:
        cols.append(("original --use_flash", offf))
    if b:
        cols.append(("original-style (emulated)", b))

    def row(label: str, values: list[str]) -> str:
        return f"  {label:<30}" + "".join(f"{v:>27}" for v in values)

    def ratio(d: dict[str, Any]) -> str:
        return num(o["images_per_s"] / d["images_per_s"], "{:.2f}×")

    mem_kind = "CUDA max allocated" if o["peak_memory_kind"].startswith("cuda") else "process max RSS"
    lines = [
        "VisionFM iBOT pretraining throughput",
        f"  date      {res['date']}   torch {res['torch']}",
        f"  device    {res['device']}",
        f"  config    {c['arch']}/{c['patch_size']}, batch {c['batch_size']}, "
        f"{c['global_crops']}×{c['input_size']}px global + {c['local_crops']}×{c['local_crops_size']}px local crops; "
        f"{c['steps']} timed steps after {c['warmup']} warm-up",
    ]
    if "official_source" in res:
        src = res["official_source"]
        lines.append(f"  original  {src['path']} @ {src['commit'][:10] or '?'}"
                     f" (stubbed imports: {', '.join(src['stubbed_imports']) or 'none'})")
    lines += [
        "",
        row("step", [name for name, _ in cols]),
        row("precision", [d["precision"] + (" +compile" if d.get("compiled") else "") for _, d in cols]),
        row("images/s (synthetic crops)", [num(d["images_per_s"]) for _, d in cols]),
        row("ours / column", ["1.00×"] + [ratio(d) for _, d in cols[1:]]),
        row("step time (ms)", [num(d["step_ms"]) for _, d in cols]),
        row("GFLOP per step (counted)", [num(d["flops_per_step"] / 1e9) for _, d in cols]),
        row("achieved TFLOP/s", [num(d["tflops_per_s"], "{:.3f}") for _, d in cols]),
        row(f"peak GiB ({mem_kind})", [num(d["peak_memory_gib"], "{:.2f}") for _, d in cols]),
    ]
    p = res.get("pipeline")
    if p:
        lines += ["", "  input pipeline: CPU cost per image, ms in one process (lower is better)",
                  f"  {'JPEG px':>9}{'decoded at':>12}{'original':>11}{'ours PIL path':>15}{'ours device path':>18}"
                  f"{'(device half)':>15}{'device/orig':>13}{'PIL/orig':>10}"]
        for size, r in p["per_image"].items():
            dec = "×".join(str(v) for v in r["decoded_size"])
            lines.append(
                f"  {size:>9}{dec:>12}{num(r.get('official_ms'), '{:.2f}'):>11}"
                f"{num(r['ours_cpu_path_ms'], '{:.2f}'):>15}"
                f"{num(r['ours_device_path_worker_ms'], '{:.2f}'):>18}"
                f"{num(r['ours_device_path_photometric_ms'], '{:.3f}'):>15}"
                f"{num(r.get('device_worker_over_official'), '{:.3f}'):>13}"
                f"{num(r.get('cpu_path_over_official'), '{:.2f}'):>10}"
            )
        def rates(d: dict[str, Any]) -> str:
            parts = [f"original {num(d['official_images_per_s'])}"] if "official_images_per_s" in d else []
            for path, label in (("cpu", "ours PIL path"), ("device", "ours device path")):
                txt = f"{label} {num(d[f'ours_{path}_path_images_per_s'])}"
                if f"ours_{path}_over_official" in d:
                    txt += f" ({num(d[f'ours_{path}_over_official'], '{:.2f}×')})"
                parts.append(txt)
            return "    " + "   ".join(parts)

        src = p.get("loader_data", "folder")
        lines += ["",
                  f"  loaders ({p['workers']} workers, {p['loader_jpeg_size']}px JPEGs, {p['batches']} batches; ours "
                  f"reading the {src}{', the original the folder' if 'official_images_per_s' in p else ''}), images/s:",
                  rates(p)]
        e = res.get("end_to_end")
        if e:
            lines += ["  end to end (each loader feeding its own step), images/s:", rates(e)]
        lines += _format_sources(res, num)
    ddp = res.get("ddp_scaling")
    if ddp and "skipped" in ddp:
        lines += ["", f"  DDP scaling: skipped ({ddp['skipped']})"]
    elif ddp:
        lines += ["", "  DDP scaling (our step under torchrun, one process per local GPU, synthetic crops):"]
        for k, r in ddp["runs"].items():
            lines.append(f"    {k:>2} GPU(s): {num(r['images_per_s'])} images/s, step {num(r['step_ms'])} ms, "
                         f"efficiency {num(r['efficiency'], '{:.2f}')}")
    tg = res.get("targets")
    if tg:
        lines += ["",
                  f"  target (H100/H200 ViT-B/16 b128): ≥ {tg['images_per_s']:,.0f} images/s "
                  f"and ≤ {tg['peak_memory_gib']:.0f} GiB → {'MET' if tg['met'] else 'NOT MET'}"]
    return "\n".join(lines)


def _format_sources(res: dict[str, Any], num: Callable[..., str]) -> list[str]:
    """The ``--data`` sources side by side (folder of files vs tar shards), with shards / folder."""
    ds = res.get("data_sources") or {}
    if not ds:
        return []
    p, names = res["pipeline"], list(ds)
    ratio = res.get("ratio_shards_over_folder")
    desc = []
    for name, d in ds.items():
        if name == "shards":
            mib = d.get("total_bytes", 0) / 2**20
            desc.append(f"shards = {d.get('n_shards', '?')} tar shard(s), {mib:,.1f} MiB in all, "
                        f"packed in {num(d.get('pack_s'), '{:.2f}')} s")
        else:
            desc.append(f"folder = {d['n_images']} files")
    lines = ["", f"  data sources ({p['loader_jpeg_size']}px JPEGs, {p['workers']} workers; "
                 f"{'; '.join(desc)}):",
             f"  {'':<40}" + "".join(f"{n:>12}" for n in names) + (f"{'shards/folder':>15}" if ratio else "")]

    def row(label: str, key: str, part: str | None, fmt: str, with_ratio: bool = True) -> None:
        vals = [(d.get(part, {}) if part else d).get(key) for d in ds.values()]
        if all(v is None for v in vals):
            return
        r = ratio.get(f"{part}_{key}" if part else key) if ratio else None
        lines.append(f"  {label:<40}" + "".join(f"{num(v, fmt):>12}" for v in vals)
                     + (f"{num(r, '{:.2f}×') if with_ratio else '':>15}" if ratio else ""))

    row("read encoded bytes, ms/image (1 thread)", "read_ms", None, "{:.3f}")
    row("read + decode, ms/image (1 thread)", "read_decode_ms", None, "{:.2f}")
    for path, label in (("cpu", "PIL path"), ("device", "device path")):
        row(f"loader, ours {label}, images/s", f"ours_{path}_path_images_per_s", "loader", "{:,.1f}")
    for path, label in (("cpu", "PIL path"), ("device", "device path")):
        row(f"end to end, ours {label}, images/s", f"ours_{path}_path_images_per_s", "end_to_end", "{:,.1f}")
    row("images read per loader", "images_read", None, "{:d}", with_ratio=False)
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args._ddp_worker:
        _ddp_worker(args)
        return {}
    res = run_benchmark(args)
    print(format_table(res), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return res


if __name__ == "__main__":
    main()
