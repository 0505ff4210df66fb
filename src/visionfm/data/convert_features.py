"""The original's feature pickles → feature stores (``visionfm convert-features SRC DST``).

``SRC`` is one ``--dst_root`` of the original ``extract_features.py`` (reference §2.9):
``SRC/<dataset>/<split>/<stem>_<epoch>.pickle``, one file per image and extraction epoch, each a
dict ``img_name`` (str), ``feats_idx`` (4 ints), ``feats`` (4 float ``[D]`` arrays: the CLS token of
the last 4 blocks), ``labels`` (float ``[L]``) and ``img_path`` (str). ``DST`` becomes what
``visionfm extract --dst_root DST`` writes: ``DST/<dataset>/<split>/pass_<k>/``, one store per
dataset, split and epoch (the ``k``-th epoch present, in increasing order; ``meta.json`` keeps the
original number as ``source_epoch``). ``train-multi-cls`` / ``train-reg --data_path <parent of DST>
--datasets <name of DST>`` and ``train-cls --features DST`` then read it like any store.

Every file is read with :func:`~visionfm.io.load_restricted_pickle` (nothing but builtin containers
and numpy arrays can be unpickled) and checked: keys, four 1-D levels of one width ``D`` for the
whole tree, one ``feats_idx``, one label width. The stores are written into a temporary sibling of
``DST`` that is renamed into place at the end, so ``DST`` is either complete or untouched.

Seg-mode pickles (``--mode seg``: ``[P, D]`` patch tokens, an integer mask as labels) are refused:
stores hold CLS tokens and per-image label vectors, and no command of either code base reads
seg-mode features (the dense decoders run the encoder online).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visionfm.errors import ConfigError, DataFormatError
from visionfm.io.atomic import atomic_dir

__all__ = ["convert_original_features", "ConversionSummary", "read_original_feature_file", "SPLITS", "PROVENANCE"]

log = logging.getLogger("visionfm.convert_features")

SPLITS = ("training", "val", "test")  # the split folders a store tree may hold (the original wrote training, test)
PROVENANCE = "converted from original pickles"
REQUIRED_KEYS = ("img_name", "feats_idx", "feats", "labels", "img_path")
LEVELS = 4
_NAME = re.compile(r"(?P<stem>.+)_(?P<epoch>\d+)\.pickle")
_SEG_REFUSAL = ("is a seg-mode feature file (--mode seg: patch tokens and a mask); visionfm feature stores hold "
                "CLS tokens and per-image label vectors, and no command of either code base reads seg-mode "
                "features (the dense decoders run the encoder online): re-extract with --mode cls")


@dataclass
class ConversionSummary:
    """What :func:`convert_original_features` wrote."""

    dst: Path
    n_files: int
    embed_dim: int
    n_labels: int
    feats_idx: list[int]
    arch: str | None
    stores: list[dict[str, Any]] = field(default_factory=list)  # dataset, split, pass, source_epoch, n_samples


@dataclass
class _Sample:
    img_name: str
    feats: np.ndarray  # [4, D] float32
    labels: np.ndarray  # [L] float32
    feats_idx: list[int]


def read_original_feature_file(path: Path) -> _Sample:
    """One cls-mode pickle of ``extract_features.py``, read safely and checked.

    Raises:
        UnsafePickleError: the file needs a global outside builtin containers and numpy arrays.
        DataFormatError: naming the file: not a dict, a missing key, wrong types or shapes, seg mode.
    """
    from visionfm.io import load_restricted_pickle

    d = load_restricted_pickle(path)
    if not isinstance(d, dict):
        raise DataFormatError(f"expected a dict (an extract_features.py feature file), got {type(d).__name__}", path)
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        raise DataFormatError(f"missing key(s) {', '.join(map(repr, missing))}; an extract_features.py feature file "
                              f"holds {', '.join(REQUIRED_KEYS)}", path)
    feats, labels = d["feats"], d["labels"]
    if not isinstance(feats, (list, tuple)) or not all(isinstance(f, np.ndarray) for f in feats):
        raise DataFormatError(f"'feats' must be a list of {LEVELS} numpy arrays, got {type(feats).__name__}", path)
    if any(f.ndim == 2 for f in feats) or (isinstance(labels, np.ndarray) and labels.ndim == 2):
        raise DataFormatError(_SEG_REFUSAL, path)
    shapes = [tuple(f.shape) for f in feats]
    if len(feats) != LEVELS or any(len(s) != 1 for s in shapes) or len(set(shapes)) != 1 or shapes[0][0] == 0:
        raise DataFormatError(f"'feats' must be {LEVELS} arrays of one shape [D], got shapes {shapes}", path)
    if not all(np.issubdtype(f.dtype, np.floating) for f in feats):
        raise DataFormatError(f"'feats' must be float arrays, got {sorted({str(f.dtype) for f in feats})}", path)
    if not isinstance(labels, np.ndarray) or labels.ndim != 1 or labels.shape[0] == 0 \
            or not (np.issubdtype(labels.dtype, np.number) or labels.dtype == np.bool_):
        got = f"shape {list(labels.shape)} {labels.dtype}" if isinstance(labels, np.ndarray) else type(labels).__name__
        raise DataFormatError(f"'labels' must be a 1-D numeric numpy array [L], got {got}", path)
    idx = d["feats_idx"]
    if not isinstance(idx, (list, tuple)) or len(idx) != LEVELS or \
            not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and int(i) >= 0 for i in idx):
        raise DataFormatError(f"'feats_idx' must list {LEVELS} block indices, got {idx!r}", path)
    for key in ("img_name", "img_path"):
        if not isinstance(d[key], str) or not d[key]:
            raise DataFormatError(f"{key!r} must be a non-empty string, got {d[key]!r}", path)
    return _Sample(img_name=d["img_name"], feats=np.stack([f.astype(np.float32) for f in feats]),
                   labels=labels.astype(np.float32), feats_idx=[int(i) for i in idx])


def _scan(src: Path) -> dict[tuple[str, str, int], list[Path]]:
    """``(dataset, split, epoch) -> files`` (sorted) of the tree ``src``."""
    groups: dict[tuple[str, str, int], list[Path]] = {}
    for ds in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for sdir in sorted(p for p in ds.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (sdir / "images").is_dir() and any((sdir / "images").glob("*.pickle")):
                first = sorted((sdir / "images").glob("*.pickle"))[0]
                raise DataFormatError(_SEG_REFUSAL, first)
            if sdir.name not in SPLITS:
                log.warning("%s: not a split folder (%s), left out", sdir, ", ".join(SPLITS))
                continue
            ignored = 0
            for f in sorted(sdir.iterdir()):
                if f.name.startswith(".") or not f.is_file():
                    continue
                if f.suffix != ".pickle":
                    ignored += 1
                    continue
                m = _NAME.fullmatch(f.name)
                if m is None:
                    raise DataFormatError("file name is not <stem>_<epoch>.pickle (as extract_features.py names "
                                          "them)", f)
                groups.setdefault((ds.name, sdir.name, int(m["epoch"])), []).append(f)
            if ignored:
                log.warning("%s: %d file(s) not ending in .pickle left out", sdir, ignored)
    return groups


def _check_destination(src: Path, dst: Path, overwrite: bool) -> None:
    s, d = src.resolve(), dst.resolve()
    if s == d or s in d.parents or d in s.parents:
        raise ConfigError(f"DST {dst} and SRC {src} overlap; write the stores to a separate folder")
    if dst.exists() and not overwrite and not (dst.is_dir() and not any(dst.iterdir())):
        raise ConfigError(f"DST {dst} already exists; pass --overwrite to replace it")
    if dst.exists() and not dst.is_dir():
        raise ConfigError(f"DST {dst} is a file, expected a folder to create")


def convert_original_features(src: str | os.PathLike[str], dst: str | os.PathLike[str], modality: str | None = None,
                              overwrite: bool = False, progress: bool = True) -> ConversionSummary:
    """Convert one original ``--dst_root`` tree into a store tree at ``dst`` (see the module docstring).

    Args:
        src: ``SRC/<dataset>/<split>/<stem>_<epoch>.pickle``.
        dst: the store tree to create; an existing non-empty folder needs ``overwrite``.
        modality: recorded as the stores' modality (canonical spelling); ``None`` records none
            (the pickles do not say which normalisation was used).
        overwrite: replace an existing ``dst``.
        progress: a tqdm bar over the files (stderr).

    Raises:
        ConfigError: missing ``src``, an existing ``dst`` without ``overwrite``, overlapping folders,
            an unknown modality.
        DataFormatError / UnsafePickleError: a file that is not a cls-mode feature file, naming it.
    """
    from visionfm import __version__
    from visionfm.data.modalities import canonical_modality

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ConfigError(f"SRC {src}: folder not found (expected the --dst_root of extract_features.py)")
    mod = canonical_modality(modality) if modality else None
    _check_destination(src, dst, overwrite)
    groups = _scan(src)
    if not groups:
        nested = sorted({p.parts[-4] for s in SPLITS for p in src.glob(f"*/*/{s}/*.pickle")})
        if nested:
            raise ConfigError(f"SRC {src} holds feature folders one level down ({', '.join(nested)}); convert each "
                              f"one: visionfm convert-features {src / nested[0]} <DST>/{nested[0]}")
        raise DataFormatError(f"no <dataset>/<split>/<stem>_<epoch>.pickle files (splits {', '.join(SPLITS)})", src)

    from tqdm.auto import tqdm

    n_files = sum(len(v) for v in groups.values())
    epochs_of: dict[tuple[str, str], list[int]] = {}
    for ds, split, ep in sorted(groups):
        epochs_of.setdefault((ds, split), []).append(ep)
    common = {"modality": mod, "visionfm_version": __version__}
    written: list[tuple[dict[str, Any], _Sample]] = []
    with atomic_dir(dst) as tmp:
        with tqdm(total=n_files, desc="convert-features", unit="file", dynamic_ncols=True, mininterval=1.0,
                  file=sys.stderr, disable=not progress) as bar:
            ref: tuple[Path, _Sample] | None = None
            for (ds, split), epochs in epochs_of.items():
                images_per_pass = []
                for k, ep in enumerate(epochs):
                    files = groups[(ds, split, ep)]
                    samples = []
                    for f in files:
                        s = read_original_feature_file(f)
                        ref = ref or (f, s)
                        _check_same_encoder(f, s, *ref)
                        samples.append(s)
                        bar.update(1)
                    meta = {**common, "split": split, "pass": k, "passes": len(epochs), "dataset": ds,
                            "source": str(src.resolve() / ds / split), "source_epoch": ep, "source_files": len(files)}
                    written.append((_write_store(tmp / ds / split / f"pass_{k}", samples, meta), samples[0]))
                    images_per_pass.append({s.img_name for s in samples})
                if any(names != images_per_pass[0] for names in images_per_pass[1:]):
                    log.warning("%s/%s: the epochs %s do not all hold the same images (an interrupted extraction?); "
                                "each pass keeps the files it has", ds, split, epochs)
    meta0, s0 = written[0]
    return ConversionSummary(
        dst=dst, n_files=n_files, embed_dim=int(meta0["embed_dim"]), n_labels=int(s0.labels.shape[0]),
        feats_idx=list(s0.feats_idx), arch=meta0["arch"],
        stores=[{k: m[k] for k in ("dataset", "split", "pass", "source_epoch", "n_samples")} for m, _ in written])


def _check_same_encoder(path: Path, s: _Sample, ref_path: Path, ref: _Sample) -> None:
    """One width, one ``feats_idx`` and one label width for the whole SRC tree (one encoder, one task)."""
    if s.feats.shape[1] != ref.feats.shape[1]:
        raise DataFormatError(f"features are {s.feats.shape[1]} wide, but {ref_path} has {ref.feats.shape[1]}: "
                              "one SRC folder must come from one encoder", path)
    if s.feats_idx != ref.feats_idx:
        raise DataFormatError(f"feats_idx {s.feats_idx}, but {ref_path} has {ref.feats_idx}: one SRC folder must "
                              "come from one encoder", path)
    if s.labels.shape[0] != ref.labels.shape[0]:
        raise DataFormatError(f"{s.labels.shape[0]} labels, but {ref_path} has {ref.labels.shape[0]}: every file "
                              "of SRC needs the same label width", path)


def _write_store(folder: Path, samples: list[_Sample], meta: dict[str, Any]) -> dict[str, Any]:
    """One pass as a feature store; returns its ``meta.json`` content (as given plus the identity fields)."""
    import torch

    from visionfm.data.features import FeatureStore
    from visionfm.models.archs import arch_from_shapes

    d, idx = int(samples[0].feats.shape[1]), list(samples[0].feats_idx)
    full = {
        # the encoder identity a store records (visionfm.data.features.IDENTITY_KEYS): unknown unless the
        # pickles imply it — the width and the block indices give the depth, hence the architecture
        "weights_source": None, "weights_sha256": None, "weights_fingerprint": None, "checkpoint_key": None,
        "arch": arch_from_shapes(d, max(idx) + 1), "patch_size": None, "input_size": None, "block_ids": idx,
        "mode": "cls", "embed_dim": d,
        # how the original extracted: random H+V flips on training epochs, bilinear resize, fp32 (seed unknown)
        "flip": "hv" if meta["split"] == "training" else "none", "seed": None, "interpolation": "bilinear",
        "autocast": "fp32", "provenance": PROVENANCE, **meta,
    }
    FeatureStore.write(folder, cls=torch.from_numpy(np.stack([s.feats for s in samples])),
                       labels=torch.from_numpy(np.stack([s.labels for s in samples])),
                       index=[{"rel_path": s.img_name, "dataset": meta["dataset"], "subject": ""} for s in samples],
                       meta=full)
    return {**full, "n_samples": len(samples)}
