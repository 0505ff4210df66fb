"""Per-task writers of ``visionfm synth``: plan the files, render every item, write the label files.

Every item (one image plus, for segmentation and landmarks, its label file) is rendered by
:func:`_work` from its own generator ``item_rng(seed, task, "<group>/<split>", index)``; label text
files are written by the parent afterwards, in index order. The output therefore does not depend
on the number of worker processes or on scheduling.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from visionfm.data.modalities import MODALITY_NAMES
from visionfm.data.synth.fundus import Findings, render_fundus
from visionfm.data.synth.modalities import LANDMARK_NAMES, PRETRAIN_RENDERERS, render_external, render_ubm
from visionfm.data.synth.oct import render_oct
from visionfm.data.synth.render import item_rng, save_png
from visionfm.data.synth.targets import TARGET_FUNCTIONS, target_specs
from visionfm.errors import ConfigError

__all__ = [
    "TASKS",
    "MULTI_LABEL_NAMES",
    "OCT_ALWAYS_ZERO",
    "DATASET",
    "generate",
    "split_sizes",
    "forecast_score",
    "FINETUNE_GROUP",
    "FINETUNE_CLASSES",
]

TASKS = ("pretrain", "single_cls", "multi_cls", "segmentation", "landmark", "metric_reg", "forecasting", "finetune")
DATASET = "dataset_A"
MULTI_LABEL_NAMES = (
    "Healthy", "DR1", "DR2", "DR3", "DR4", "DR", "Glaucoma", "AMD", "Cataract",
    "Hypertensive retinopathy", "RVO", "Myopia", "Retinal detachment",
)
OCT_ALWAYS_ZERO = (9,)  # hypertensive retinopathy is not drawn on OCT scans
FINDING_PREVALENCE = 0.3  # each of labels 6..12, independently
P_NO_DR = 0.4  # DR grade 0; grades 1..4 share the rest equally (multi_cls, metric_reg)
LANDMARK_FORMATS = ("map", "points")
MIN_SIZE, MAX_SIZE = 32, 4096
FORECAST_DAYS = (30, 3650)
FORECAST_DISC_SCALE = 2.0  # forecasting: an optic disc twice the natural size, so the cup is visible at 64 px
FINETUNE_GROUP = "FundusFinetune"
# finetune: DR grades 0..4 as class folders. These are the names (and the order) of the RETFound APTOS2019 /
# MESSIDOR2 benchmarks, and they sort alphabetically in grade order, so every class-order preset agrees.
#: display names of the synthetic DR grades 0-4 (``single_cls``), written to its ``classes.txt``
DR_GRADE_NAMES = ("no DR", "mild NPDR", "moderate NPDR", "severe NPDR", "proliferative DR")
FINETUNE_CLASSES = ("anodr", "bmilddr", "cmoderatedr", "dseveredr", "eproliferativedr")


@dataclass(frozen=True)
class _Layout:
    groups: tuple[str, ...]
    splits: tuple[str, ...]
    dataset: bool  # whether images sit under <group>/dataset_A/


_LAYOUTS: dict[str, _Layout] = {
    "pretrain": _Layout(MODALITY_NAMES, ("",), False),
    "single_cls": _Layout(("FundusClassification",), ("training", "val", "test"), True),
    "multi_cls": _Layout(("FundusClassificationMulti", "OCTClassificationMulti"), ("training", "val", "test"), True),
    "segmentation": _Layout(("VesselSegmentation",), ("training", "val", "test"), True),
    "landmark": _Layout(("LandmarkDetection",), ("training", "val", "test"), True),
    "metric_reg": _Layout(("FundusRegression", "ExternalRegression"), ("training", "val", "test"), True),
    "forecasting": _Layout(("GlaucomaForecasting",), ("training", "val", "test"), False),
    # RETFound / torchvision ImageFolder: <group>/{train,val,test}/<class>/%08d.png
    "finetune": _Layout((FINETUNE_GROUP,), ("train", "val", "test"), False),
}


def split_sizes(task: str, num: int) -> dict[str, int]:
    """Images per split: ``num`` for training/train and test (and per pretraining modality), ``max(2, num // 4)``
    for val."""
    return {s: (max(2, num // 4) if s == "val" else num) for s in _LAYOUTS[task].splits}


def forecast_score(cup_ratio: float, days: int) -> float:
    """Latent progression score of the forecasting task; the label is ``score > 0``."""
    return 8.0 * (cup_ratio - 0.5) + 1.2 * math.log(days / 365.0)


# ----------------------------------------------------------------------------------------------
# item renderers: (rng, size, group, opts) -> (image uint8 [S,S,3], label payload, label array | None)


def _multi_findings(rng: np.random.Generator, oct_scan: bool) -> Findings:
    grade = 0 if rng.random() < P_NO_DR else int(rng.integers(1, 5))
    flags = [bool(v) for v in rng.random(7) < FINDING_PREVALENCE]
    if oct_scan:
        flags[3] = False  # hypertensive retinopathy (label 9) is never shown on OCT
    return Findings(grade, *flags)


def _multi_vector(f: Findings) -> tuple[int, ...]:
    onehot = [int(f.grade == k) for k in range(5)]
    rest = [f.grade > 0, f.glaucoma, f.amd, f.cataract, f.hypertensive, f.rvo, f.myopia, f.rd]
    return tuple(onehot + [int(v) for v in rest])


def _r_pretrain(rng, size, group, opts):
    return PRETRAIN_RENDERERS[group](rng, size), None, None


def _r_single(rng, size, group, opts):
    grade = int(rng.integers(0, 5))
    return render_fundus(rng, size, Findings(grade)).image, grade, None


def _r_multi(rng, size, group, opts):
    oct_scan = group.startswith("OCT")
    f = _multi_findings(rng, oct_scan)
    img = render_oct(rng, size, f).image if oct_scan else render_fundus(rng, size, f).image
    return img, _multi_vector(f), None


def _r_seg(rng, size, group, opts):
    c = int(opts["num_classes"])
    grade = 0
    if c >= 4 and rng.random() >= P_NO_DR:
        grade = int(rng.integers(1, 4))  # grades 1..3 (grade 4 adds neovessels, which are vessels too)
    r = render_fundus(rng, size, Findings(grade))
    label = np.zeros((size, size), np.uint8)
    if c >= 3:
        label[r.disc] = 2
    if c >= 4:
        label[r.lesion] = 3
    label[r.vessel] = 1
    return r.image, np.bincount(label.ravel(), minlength=c)[:c].tolist(), label


def _r_landmark(rng, size, group, opts):
    r = render_ubm(rng, size)
    if opts["landmark_format"] == "points":
        arr = r.landmarks.astype(np.float32)
    else:
        arr = np.zeros((size, size, len(r.landmarks)), np.uint8)
        for k, (x, y) in enumerate(r.landmarks.tolist()):
            col = min(max(int(round(x)), 0), size - 1)
            row = min(max(int(round(y)), 0), size - 1)
            arr[row, col, k] = 1
    return r.image, r.landmarks.tolist(), arr


def _r_metric(rng, size, group, opts):
    if group.startswith("Fundus"):
        r = render_fundus(rng, size, _multi_findings(rng, False))
    else:
        r = render_external(rng, size)
    vals = TARGET_FUNCTIONS[group](r)
    return r.image, [float(v) for v in vals], None


def _r_forecast(rng, size, group, opts):
    cdr = float(rng.uniform(0.2, 0.85))
    lo, hi = FORECAST_DAYS
    days = int(min(max(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))), lo), hi))
    img = render_fundus(rng, size, Findings(), cup_ratio=cdr, disc_scale=FORECAST_DISC_SCALE).image
    label = int(forecast_score(cdr, days) > 0.0)
    return img, (label, days, cdr), None


def _r_finetune(rng, size, group, opts):
    grade = int(opts["index"]) % len(FINETUNE_CLASSES)  # balanced: every class in every split of >= 5 images
    return render_fundus(rng, size, Findings(grade)).image, grade, None


_RENDER = {
    "pretrain": _r_pretrain,
    "single_cls": _r_single,
    "multi_cls": _r_multi,
    "segmentation": _r_seg,
    "landmark": _r_landmark,
    "metric_reg": _r_metric,
    "forecasting": _r_forecast,
    "finetune": _r_finetune,
}


def _item_dir(root: Path, task: str, group: str, split: str) -> Path:
    lay = _LAYOUTS[task]
    d = root / group
    if lay.dataset:
        d = d / DATASET
    if split:
        d = d / split
    return d


def _paths(root: Path, task: str, group: str, split: str, index: int) -> tuple[Path, Path | None]:
    d = _item_dir(root, task, group, split)
    name = f"{index:08d}.png"
    if task == "segmentation":
        return d / "images" / name, d / "labels" / name
    if task == "landmark":
        return d / "images" / name, d / "labels" / f"{index:08d}.npy"
    return d / name, None


def _work(job: tuple) -> Any:
    """Render and write one item; returns its label payload. Top-level so worker processes can run it."""
    task, seed, size, opts, root, group, split, index = job
    rng = item_rng(seed, task, f"{group}/{split}", index)
    if task == "finetune":
        opts = {**opts, "index": index}
    image, payload, label = _RENDER[task](rng, size, group, opts)
    img_path, label_path = _paths(Path(root), task, group, split, index)
    if task == "finetune":  # <split>/<class>/: created here, so no class folder is ever empty (torchvision
        img_path = img_path.parent / FINETUNE_CLASSES[payload] / img_path.name  # ImageFolder refuses empty ones)
        img_path.parent.mkdir(parents=True, exist_ok=True)
    save_png(img_path, image)
    if label_path is not None:
        if label_path.suffix == ".npy":
            np.save(label_path, label, allow_pickle=False)
        else:
            save_png(label_path, label)
    return payload


# ----------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        allowed = f"> {lo - 1}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{name} must be {allowed}, got {value}")
    return value


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8", newline="\n")


def generate(
    task: str,
    dst_dir: str | os.PathLike,
    num: int = 500,
    img_size: int = 512,
    seed: int = 0,
    *,
    num_classes: int = 4,
    landmark_format: str = "map",
    workers: int = 1,
) -> dict[str, Any]:
    """Write one synthetic data set in the original VisionFM layout and return a summary.

    Args:
        task: one of :data:`TASKS`.
        dst_dir: output root (created if missing). Existing files with the same names are
            overwritten; nothing else is deleted.
        num: images per split (training/train and test; val gets ``max(2, num // 4)``), or per
            modality for ``pretrain``. Must be > 0.
        img_size: side of the square images, in [32, 4096].
        seed: non-negative integer; the same seed gives byte-identical files.
        num_classes: segmentation classes, 2 (background/vessel), 3 (+ optic disc) or 4 (+ lesions).
        landmark_format: ``"map"`` (original: uint8 ``[S, S, 3]`` with one 1 per channel) or
            ``"points"`` (float32 ``[3, 2]`` (x, y) pixel coordinates).
        workers: processes rendering in parallel (output is identical for any value).

    Returns:
        dict with ``task``, ``root`` (the task folders), ``counts`` per ``group/split``,
        ``label_files``, ``files_written``, ``label_distribution``, ``seconds`` and the arguments.

    Raises:
        ConfigError: for an unknown task or an out-of-range argument.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; valid tasks are {', '.join(TASKS)}")
    num = _check_int("num", num, 1)
    img_size = _check_int("img_size", img_size, MIN_SIZE, MAX_SIZE)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    num_classes = _check_int("num_classes", num_classes, 2, 4)
    workers = _check_int("workers", workers, 1, 256)
    if landmark_format not in LANDMARK_FORMATS:
        raise ConfigError(f"landmark_format must be one of {', '.join(LANDMARK_FORMATS)}, got {landmark_format!r}")
    opts = {"num_classes": num_classes, "landmark_format": landmark_format}
    root = Path(dst_dir)
    lay = _LAYOUTS[task]
    sizes = split_sizes(task, num)
    t0 = time.perf_counter()

    jobs: list[tuple] = []
    keys: list[tuple[str, str, int]] = []
    for group in lay.groups:
        for split in lay.splits:
            d = _item_dir(root, task, group, split)
            if task in ("segmentation", "landmark"):
                (d / "images").mkdir(parents=True, exist_ok=True)
                (d / "labels").mkdir(parents=True, exist_ok=True)
            else:
                d.mkdir(parents=True, exist_ok=True)
            for i in range(sizes[split]):
                jobs.append((task, seed, img_size, opts, str(root), group, split, i))
                keys.append((group, split, i))

    if workers > 1 and len(jobs) > 1:
        chunk = max(1, len(jobs) // (workers * 8))
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=get_context("spawn")) as ex:
            payloads = list(ex.map(_work, jobs, chunksize=chunk))
    else:
        payloads = [_work(j) for j in jobs]

    per: dict[tuple[str, str], list[Any]] = {}
    for (group, split, _), p in zip(keys, payloads):
        per.setdefault((group, split), []).append(p)

    label_files: list[str] = []
    dist: dict[str, Any] = {}
    files = len(jobs) * (2 if task in ("segmentation", "landmark") else 1)
    for (group, split), items in per.items():
        key = f"{group}/{split}" if split else group
        ddir = root / group / DATASET if lay.dataset else root / group
        names = [f"{split}/{i:08d}.png" for i in range(len(items))]
        if task == "single_cls":
            _write_lines(ddir / f"{split}_labels.txt", [f"{n};{k}" for n, k in zip(names, items)])
            label_files.append(str(ddir / f"{split}_labels.txt"))
            cnt = Counter(items)
            dist[key] = {str(k): cnt.get(k, 0) for k in range(5)}
        elif task == "multi_cls":
            _write_lines(ddir / f"{split}_labels.txt", [f"{n};" + ",".join(map(str, v)) for n, v in zip(names, items)])
            label_files.append(str(ddir / f"{split}_labels.txt"))
            dist[key] = dict(zip(MULTI_LABEL_NAMES, np.asarray(items).sum(axis=0).tolist()))
        elif task == "metric_reg":
            rows = [f"{n};" + ",".join(f"{v:.4f}" for v in vals) for n, vals in zip(names, items)]
            _write_lines(ddir / f"{split}_labels.txt", rows)
            label_files.append(str(ddir / f"{split}_labels.txt"))
            arr = np.asarray(items, dtype=np.float64)
            dist[key] = {"mean": arr.mean(axis=0).round(4).tolist(), "std": arr.std(axis=0).round(4).tolist()}
        elif task == "forecasting":
            lines = [f"{n}, {lab}, {days}" for n, (lab, days, _) in zip(names, items)]
            _write_lines(ddir / f"{split}.txt", lines)
            label_files.append(str(ddir / f"{split}.txt"))
            labs = [lab for lab, _, _ in items]
            days = [d for _, d, _ in items]
            dist[key] = {"0": labs.count(0), "1": labs.count(1), "days_min": min(days), "days_max": max(days)}
        elif task == "segmentation":
            tot = np.asarray(items, dtype=np.float64).sum(axis=0)
            dist[key] = {str(c): round(float(v / tot.sum()), 5) for c, v in enumerate(tot)}
        elif task == "finetune":
            cnt = Counter(items)
            dist[key] = {name: cnt.get(k, 0) for k, name in enumerate(FINETUNE_CLASSES)}
        elif task == "landmark":
            pts = np.asarray(items, dtype=np.float64)
            dist[key] = {n: pts[:, k].mean(axis=0).round(2).tolist() for k, n in enumerate(LANDMARK_NAMES)}
    if task == "single_cls":  # the grade names, read by train-cls (and copied by extract next to the stores)
        for group in lay.groups:
            p = root / group / DATASET / "classes.txt" if lay.dataset else root / group / "classes.txt"
            _write_lines(p, ["# DR grade per label id (ICDR scale)", *DR_GRADE_NAMES])
            label_files.append(str(p))
    if task == "metric_reg":
        for group in lay.groups:
            p = root / group / DATASET / "targets.json"
            spec = {"dataset": group, "targets": target_specs(group)}
            p.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
            label_files.append(str(p))
    files += len(label_files)

    return {
        "task": task,
        "dst_dir": str(root),
        "root": [str(root / g) for g in lay.groups],
        "num": num,
        "img_size": img_size,
        "seed": seed,
        "options": opts if task in ("segmentation", "landmark") else {},
        "counts": {(f"{g}/{s}" if s else g): len(v) for (g, s), v in per.items()},
        "label_files": label_files,
        "files_written": files,
        "label_distribution": dist,
        "seconds": round(time.perf_counter() - t0, 3),
    }
