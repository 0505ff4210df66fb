"""Frozen encoder → features: shared by ``visionfm extract`` and ``visionfm train-cls``.

* :func:`encoder_identity` — what makes two feature sets comparable (weights hash and parameter
  fingerprint, arch, patch size, input size, modality, block ids, mode).
* :func:`eval_transform` — ``Resize((S, S))`` → ``ToTensor`` → ``Normalize(modality)``.
* :class:`FlipView` — deterministic per-sample H/V flips for augmented passes: the flip of sample ``i``
  in pass ``p`` depends only on ``(seed, p, i)``, so any sharding over ranks gives the same features.
* :func:`compute_features` — one pass over a dataset (or a subset of its indices) under ``no_grad``,
  bf16 autocast on CUDA, fp32 on CPU.
* :func:`features_in_memory` — every rank computes a shard; the shards are gathered in dataset order.
* :func:`extract_to_store` — every rank writes its shard as a feature store; rank 0 merges them
  atomically; finished passes and matching shards are reused on a rerun.
* :func:`pool_tokens` — the head input: concatenated CLS of the last ``n`` blocks, or mean patch token.
* :func:`resolve_modality` / :func:`resolved_encoder_options` — what a command records: the modality
  given, else the one the weights record, else the original default; the arch and patch size the
  encoder was loaded with (inferred from the file when not given).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from visionfm.data.features import FeatureStore, identity_mismatches
from visionfm.engine.trainer import autocast
from visionfm.models.pooling import pool_tokens

__all__ = [
    "encoder_identity",
    "weights_fingerprint",
    "eval_transform",
    "FlipView",
    "compute_features",
    "features_in_memory",
    "extract_to_store",
    "shard_indices",
    "pool_tokens",
    "load_frozen_encoder",
    "store_matches",
    "resolve_modality",
    "resolved_encoder_options",
    "CLS_LEVELS",
    "ORIGINAL_MODALITY",
]

log = logging.getLogger("visionfm.features")

CLS_LEVELS = 4  # CLS tokens of the last 4 blocks, as the original
ORIGINAL_MODALITY = "Fundus"  # the original scripts' --modality default (train_landmark_decoder.py: UBM)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the parameter and buffer bytes (names sorted): identifies random encoders too."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def encoder_identity(encoder: Any, modality: str, input_size: int, mode: str = "cls") -> dict[str, Any]:
    """The identity recorded in (and demanded from) a feature store."""
    from visionfm import __version__
    from visionfm.data.modalities import canonical_modality
    from visionfm.models import dense_block_ids

    report = getattr(encoder, "load_report", None)
    rep = report.to_dict() if report is not None else {}
    depth = int(encoder.depth)
    block_ids = list(range(depth - CLS_LEVELS, depth))
    ident: dict[str, Any] = {
        "weights_source": rep.get("source"),
        "weights_sha256": rep.get("sha256"),
        "weights_fingerprint": weights_fingerprint(encoder),
        "checkpoint_key": rep.get("checkpoint_key"),
        "arch": rep.get("arch"),
        "patch_size": int(encoder.patch_size),
        "input_size": int(input_size),
        "modality": canonical_modality(modality),
        "block_ids": block_ids,
        "mode": mode,
        "embed_dim": int(encoder.embed_dim),
        "visionfm_version": __version__,
    }
    if mode == "seg":
        ident["patch_block_ids"] = list(dense_block_ids(depth))
    return ident


def resolve_modality(given: str | None, weights: Any, fallback: str = ORIGINAL_MODALITY) -> str:
    """The modality whose statistics normalise the images: ``given`` (``--modality``; the data's modality is
    the user's call, a warning says when the weights record another), else the modality ``weights``
    record (our exports and model folders), else ``fallback`` (the original script's default)."""
    from visionfm.data.modalities import canonical_modality
    from visionfm.models.loading import recorded_metadata

    recorded = recorded_metadata(weights).get("modality") or None
    if given:
        if recorded and canonical_modality(recorded) != canonical_modality(given):
            log.warning("--modality %s: normalising with %s statistics, although %s records %s",
                        given, canonical_modality(given), weights, recorded)
        return given
    if recorded:
        log.info("modality %s, as recorded by %s", recorded, weights)
        return canonical_modality(recorded)
    return fallback


def resolved_encoder_options(opts: Any, encoder: Any) -> Any:
    """``opts`` with ``arch`` and ``patch_size`` as the encoder was loaded (``encoder.load_report``): given
    values were checked against the file by :func:`~visionfm.models.loading.load_encoder`; absent ones were
    inferred from it. Everything a run records then names the encoder it really used."""
    rep = encoder.load_report
    return opts.replace(arch=rep.arch, patch_size=int(rep.patch_size))


def load_frozen_encoder(weights: str | None, arch: str | None, checkpoint_key: str, patch_size: int | None,
                        input_size: int, **kwargs: Any) -> torch.nn.Module:
    """The encoder a decoder command trains on: ``weights`` is required (a file, a model folder or 'random')."""
    from visionfm.errors import ConfigError
    from visionfm.models.loading import load_encoder

    if not weights:
        raise ConfigError("--pretrained_weights is required (a weights file, or 'random' for a random encoder)")
    return load_encoder(weights, arch, checkpoint_key, patch_size, input_size, **kwargs)


def eval_transform(input_size: int, modality: str, interpolation: str = "bilinear"):
    """``Resize((S, S))`` → ``ToTensor`` → ``Normalize`` with the modality statistics."""
    from torchvision import transforms as T

    from visionfm.data.modalities import get_stats

    mean, std = get_stats(modality)
    interp = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[interpolation]
    return T.Compose([T.Resize((input_size, input_size), interpolation=interp), T.ToTensor(), T.Normalize(mean, std)])


class FlipView(Dataset):
    """A dataset view with seeded random horizontal and vertical flips (p = 0.5 each) on the tensor.

    The original flips the resized PIL image before ToTensor/Normalize; flipping the normalised
    tensor gives the same pixels. Flips are a pure function of ``(seed, pass_id, index)``.
    """

    def __init__(self, base: Dataset, seed: int, pass_id: int) -> None:
        self.base = base
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(pass_id) * 7_919 + 17)
        self.flips = torch.randint(0, 2, (len(base), 2), generator=g).bool()  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        img, label, extras = self.base[i]
        if self.flips[i, 0]:
            img = torch.flip(img, dims=[-1])
        if self.flips[i, 1]:
            img = torch.flip(img, dims=[-2])
        return img, label, extras


def _collate(batch):
    imgs = torch.stack([b[0] for b in batch])
    labels = torch.stack([torch.as_tensor(b[1], dtype=torch.float32).reshape(-1) for b in batch])
    extras = [b[2] for b in batch]
    return imgs, labels, extras


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Contiguous shard ``rank`` of ``range(n)``; concatenating shards in rank order gives ``range(n)``."""
    return list(range(n * rank // world, n * (rank + 1) // world))


@torch.no_grad()
def compute_features(
    encoder: torch.nn.Module,
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 128,
    num_workers: int = 0,
    indices: Sequence[int] | None = None,
    mode: str = "cls",
    progress_desc: str | None = None,
    amp: bool = True,
) -> dict[str, Any]:
    """One pass of the frozen encoder over ``dataset`` (rows in ``indices`` order).

    Returns a dict with ``cls`` ``[N, 4, D]``, ``patch_mean`` ``[N, D]`` (last block), ``labels``
    ``[N, L]``, ``index`` (rows with rel_path/dataset/subject, plus ``img_path``) and, for
    ``mode="seg"``, ``patch`` ``[N, 4, P, D]`` from the dense block ids. Autocast bf16 on CUDA when
    ``amp`` (fp32 otherwise, as the original); outputs are always float32 on CPU.
    """
    from visionfm.engine.logging import progress
    from visionfm.models import dense_block_ids

    ds = dataset if indices is None else Subset(dataset, list(indices))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate,
                        pin_memory=device.type == "cuda")
    encoder.eval()
    depth = int(encoder.depth)  # type: ignore[arg-type]
    cls_ids = list(range(depth - CLS_LEVELS, depth))
    wanted = sorted(set(cls_ids) | (set(dense_block_ids(depth)) if mode == "seg" else set()))
    cls_out, mean_out, patch_out, label_out, rows = [], [], [], [], []
    it = progress(loader, total=len(loader), desc=progress_desc or "features", enabled=bool(progress_desc))
    for imgs, labels, extras in it:
        imgs = imgs.to(device, non_blocking=True)
        with autocast(device, amp):
            outs = encoder.forward_intermediates_tokens(imgs, wanted, norm=True)  # type: ignore[operator]
        by_id = {b: o.float() for b, o in zip(wanted, outs)}
        cls_out.append(torch.stack([by_id[b][:, 0] for b in cls_ids], dim=1).cpu())
        mean_out.append(by_id[cls_ids[-1]][:, 1:].mean(dim=1).cpu())
        if mode == "seg":
            patch_out.append(torch.stack([by_id[b][:, 1:] for b in dense_block_ids(depth)], dim=1).cpu())
        label_out.append(labels)
        for e in extras:
            rows.append({"rel_path": e.get("rel_path", e.get("img_path", "")), "dataset": e.get("dataset", ""),
                         "subject": e.get("subject", ""), "img_path": e.get("img_path", "")})
    d = int(encoder.embed_dim)  # type: ignore[arg-type]
    out: dict[str, Any] = {
        "cls": torch.cat(cls_out) if cls_out else torch.zeros(0, CLS_LEVELS, d),
        "patch_mean": torch.cat(mean_out) if mean_out else torch.zeros(0, d),
        "labels": torch.cat(label_out) if label_out else torch.zeros(0, 1),
        "index": rows,
    }
    if mode == "seg":
        out["patch"] = torch.cat(patch_out) if patch_out else None
    return out


def _concat(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"index": [r for p in parts for r in p["index"]]}
    for key in ("cls", "patch_mean", "labels", "patch"):
        vals = [p[key] for p in parts if p.get(key) is not None and p[key].shape[0] > 0]
        if vals:
            out[key] = torch.cat(vals)
        elif parts and parts[0].get(key) is not None:
            out[key] = parts[0][key]
    return out


def features_in_memory(
    encoder: torch.nn.Module,
    dataset: Dataset,
    env: Any,
    batch_size: int,
    num_workers: int = 0,
    desc: str | None = None,
    amp: bool = True,
) -> dict[str, Any]:
    """Features of the whole dataset on every rank: each rank computes a contiguous shard, then all gather."""
    n = len(dataset)  # type: ignore[arg-type]
    idx = shard_indices(n, env.rank, env.world_size)
    part = compute_features(encoder, dataset, env.device, batch_size, num_workers, idx,
                            progress_desc=desc if env.is_main else None, amp=amp)
    if env.world_size == 1:
        return part
    parts: list[Any] = [None] * env.world_size
    dist.all_gather_object(parts, part)
    return _concat(parts)


def extract_to_store(
    encoder: torch.nn.Module,
    dataset: Dataset,
    folder: str | Path,
    identity: Mapping[str, Any],
    meta: Mapping[str, Any],
    env: Any,
    batch_size: int,
    num_workers: int = 0,
    mode: str = "cls",
    desc: str | None = None,
    amp: bool = True,
) -> str:
    """Extract one pass into the store ``folder``; returns ``"skipped"`` or ``"written"``.

    A finished store with a matching identity and description is skipped. Otherwise rank ``r`` writes
    its shard under ``<folder>.shards/rank<r>of<W>`` (reused when a previous interrupted run left a
    matching one), all ranks meet at a barrier, and rank 0 concatenates the shards in dataset order,
    writes the store atomically and removes the shards.
    """
    from visionfm.engine.distributed import barrier

    folder = Path(folder)
    want = {**identity, **meta}
    n = len(dataset)  # type: ignore[arg-type]
    if store_matches(FeatureStore.read_meta(folder), want, n):
        if env.is_main:
            log.info("%s: finished and matching, skipped", folder)
        return "skipped"
    barrier()  # every rank has read the old meta before rank 0 may replace the folder
    shard_root = folder.with_name(folder.name + ".shards")
    world = env.world_size
    idx = shard_indices(n, env.rank, world)
    shard_dir = shard_root / f"rank{env.rank}of{world}"
    shard_meta = {**want, "shard": [env.rank, world], "shard_rows": [idx[0], idx[-1] + 1] if idx else [0, 0]}
    if store_matches(FeatureStore.read_meta(shard_dir), shard_meta, len(idx)):
        log.info("%s: reusing shard from an interrupted run", shard_dir)
    else:
        part = compute_features(encoder, dataset, env.device, batch_size, num_workers, idx, mode=mode,
                                progress_desc=desc if env.is_main else None, amp=amp)
        _write_part(shard_dir, part, shard_meta)
    barrier()
    if env.is_main:
        parts = []
        for r in range(world):
            d = shard_root / f"rank{r}of{world}"
            st = FeatureStore.open(d, expect=identity)
            parts.append({"cls": st.cls, "patch_mean": st.patch_mean, "labels": st.labels, "patch": st.patch,
                          "index": st.index})
        merged = _concat(parts)
        if merged["cls"].shape[0] != n:
            raise RuntimeError(f"{folder}: merged {merged['cls'].shape[0]} rows, expected {n}")
        _write_part(folder, merged, want)
        shutil.rmtree(shard_root, ignore_errors=True)
    barrier()
    return "written"


def _write_part(folder: Path, part: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    FeatureStore.write(folder, part["cls"], part["labels"], part["index"], meta,
                       patch_mean=part.get("patch_mean"), patch=part.get("patch"))


def store_matches(found: Mapping[str, Any] | None, want: Mapping[str, Any], n: int) -> bool:
    if found is None or int(found.get("n_samples", -1)) != n:
        return False
    if identity_mismatches(found, want):
        return False
    for key, value in want.items():
        if key in ("visionfm_version",):
            continue
        if found.get(key) != value and not (isinstance(value, (list, tuple)) and list(value) == found.get(key)):
            return False
    return True
