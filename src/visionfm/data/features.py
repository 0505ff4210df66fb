"""Feature store: frozen-encoder features on disk, one folder per dataset, split and pass.

A store folder holds three files (reference §2.9 describes the original's pickles, which this replaces):

* ``features.safetensors`` — ``cls`` float32 ``[N, 4, D]`` (CLS token of the last 4 blocks, each
  through the final norm), ``patch_mean`` float32 ``[N, D]`` (mean of the last block's patch tokens,
  for ``--avgpool_patchtokens 1``), optional ``patch`` float32 ``[N, 4, P, D]`` (``--mode seg``:
  patch tokens of the dense block ids) and ``labels`` float32 ``[N, L]``;
* ``index.csv`` — ``rel_path,dataset,subject`` per sample, in tensor order;
* ``meta.json`` — the encoder identity (see :data:`IDENTITY_KEYS`), ``split``, ``pass``, ``passes``,
  ``flip``, ``n_samples``, ``tensors`` (name → shape) and ``features_sha256``.

:meth:`FeatureStore.write` builds the folder under a temporary name and renames it into place, so a
store is either complete or absent; ``meta.json`` is written last. :meth:`FeatureStore.open` checks
shapes, row counts and the file hash, and refuses a store made by another encoder.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from visionfm.errors import VisionFMError
from visionfm.io.atomic import atomic_dir

__all__ = ["FeatureStore", "FeatureStoreError", "IDENTITY_KEYS", "identity_mismatches", "INDEX_FIELDS"]

log = logging.getLogger("visionfm.data.features")

FEATURES_FILE = "features.safetensors"
INDEX_FILE = "index.csv"
META_FILE = "meta.json"
INDEX_FIELDS = ("rel_path", "dataset", "subject")
STORE_FORMAT = "visionfm-features/1"

# Keys of meta.json that must match between a store and the encoder asked for.
IDENTITY_KEYS = (
    "weights_sha256",
    "weights_fingerprint",
    "arch",
    "patch_size",
    "input_size",
    "modality",
    "block_ids",
    "mode",
)


class FeatureStoreError(VisionFMError):
    """A feature-store folder that is missing, truncated, corrupt, or made by another encoder."""


def identity_mismatches(found: Mapping[str, Any], expect: Mapping[str, Any]) -> list[str]:
    """Human-readable differences for the identity keys present in ``expect``.

    ``weights_sha256`` is only compared when both sides have one (a random encoder has none, its
    ``weights_fingerprint`` — a hash of the parameters — identifies it instead).
    """
    diffs = []
    for key in IDENTITY_KEYS:
        if key not in expect:
            continue
        want, have = expect[key], found.get(key)
        if key == "weights_sha256" and (want is None or have is None):
            continue
        if _norm(want) != _norm(have):
            diffs.append(f"{key}: store has {have!r}, expected {want!r}")
    return diffs


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return v


@dataclass
class FeatureStore:
    """An opened store: tensors in memory plus its index rows and metadata."""

    folder: Path
    cls: torch.Tensor
    labels: torch.Tensor
    index: list[dict[str, str]]
    meta: dict[str, Any]
    patch_mean: torch.Tensor | None = None
    patch: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.cls.shape[0])

    @property
    def rel_paths(self) -> list[str]:
        return [row["rel_path"] for row in self.index]

    # -- writing -----------------------------------------------------------------------------------

    @staticmethod
    def write(
        folder: str | os.PathLike[str],
        cls: torch.Tensor,
        labels: torch.Tensor,
        index: Sequence[Mapping[str, Any]],
        meta: Mapping[str, Any],
        patch_mean: torch.Tensor | None = None,
        patch: torch.Tensor | None = None,
    ) -> Path:
        """Write a complete store atomically (temporary sibling folder, then rename).

        An existing store at ``folder`` is replaced. ``meta`` should hold the encoder identity
        (:data:`IDENTITY_KEYS`) and the split/pass description; sizes and hashes are added here.
        """
        dest = Path(folder)
        n = int(cls.shape[0])
        if cls.ndim != 3:
            raise ValueError(f"cls must be [N, levels, D], got {tuple(cls.shape)}")
        if labels.ndim != 2 or labels.shape[0] != n:
            raise ValueError(f"labels must be [N, L] with N={n}, got {tuple(labels.shape)}")
        if len(index) != n:
            raise ValueError(f"index has {len(index)} rows for {n} feature rows")
        tensors = {"cls": cls.float(), "labels": labels.float()}
        if patch_mean is not None:
            if patch_mean.shape[0] != n:
                raise ValueError("patch_mean has a different number of rows than cls")
            tensors["patch_mean"] = patch_mean.float()
        if patch is not None:
            if patch.shape[0] != n:
                raise ValueError("patch has a different number of rows than cls")
            tensors["patch"] = patch.float()
        from safetensors.torch import save_file

        with atomic_dir(dest) as tmp:
            feats = tmp / FEATURES_FILE
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(feats),
                      metadata={"format": STORE_FORMAT})
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(INDEX_FIELDS), lineterminator="\n")
            writer.writeheader()
            for row in index:
                writer.writerow({k: str(row.get(k, "") or "") for k in INDEX_FIELDS})
            (tmp / INDEX_FILE).write_text(buf.getvalue(), encoding="utf-8")
            from visionfm.io import file_sha256

            full = dict(meta)
            full.update(
                format=STORE_FORMAT,
                n_samples=n,
                tensors={k: list(v.shape) for k, v in tensors.items()},
                features_bytes=feats.stat().st_size,
                features_sha256=file_sha256(feats),
            )
            (tmp / META_FILE).write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
            for p in tmp.iterdir():
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
        return dest

    # -- reading -----------------------------------------------------------------------------------

    @staticmethod
    def read_meta(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
        """``meta.json`` of a finished store, or ``None`` when the folder has none (unfinished/absent)."""
        path = Path(folder) / META_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise FeatureStoreError(f"feature store {folder}: meta.json is unreadable ({exc})") from None

    @classmethod
    def open(
        cls_,
        folder: str | os.PathLike[str],
        expect: Mapping[str, Any] | None = None,
        verify_hash: bool = True,
    ) -> FeatureStore:
        """Open and validate a store.

        Args:
            folder: the store folder.
            expect: encoder identity the store must match (keys of :data:`IDENTITY_KEYS` present
                here are compared); ``None`` skips the check.
            verify_hash: compare the SHA-256 of ``features.safetensors`` with ``meta.json``.

        Raises:
            FeatureStoreError: naming the folder and what is missing, truncated or different.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FeatureStoreError(f"feature store {folder}: folder not found")
        meta = cls_.read_meta(folder)
        if meta is None:
            raise FeatureStoreError(f"feature store {folder}: no meta.json (extraction unfinished or not a store)")
        if meta.get("format") != STORE_FORMAT:
            raise FeatureStoreError(f"feature store {folder}: format {meta.get('format')!r}, expected {STORE_FORMAT!r}")
        if expect is not None:
            diffs = identity_mismatches(meta, expect)
            if diffs:
                raise FeatureStoreError(
                    f"feature store {folder} was made by a different encoder or setting: " + "; ".join(diffs)
                )
        feats = folder / FEATURES_FILE
        if not feats.is_file():
            raise FeatureStoreError(f"feature store {folder}: {FEATURES_FILE} is missing")
        size = feats.stat().st_size
        if size != meta.get("features_bytes"):
            raise FeatureStoreError(
                f"feature store {folder}: {FEATURES_FILE} has {size} bytes, meta.json records "
                f"{meta.get('features_bytes')} (truncated or replaced)"
            )
        if verify_hash:
            from visionfm.io import file_sha256

            digest = file_sha256(feats)
            if digest != meta.get("features_sha256"):
                raise FeatureStoreError(
                    f"feature store {folder}: {FEATURES_FILE} SHA-256 {digest[:16]}… differs from meta.json "
                    f"{str(meta.get('features_sha256'))[:16]}… (corrupt)"
                )
        try:
            from safetensors.torch import load_file

            tensors = load_file(str(feats))
        except Exception as exc:  # safetensors raises its own error types
            raise FeatureStoreError(f"feature store {folder}: cannot read {FEATURES_FILE} ({exc})") from None
        n = int(meta.get("n_samples", -1))
        for name, shape in (meta.get("tensors") or {}).items():
            if name not in tensors or list(tensors[name].shape) != list(shape):
                got = None if name not in tensors else list(tensors[name].shape)
                raise FeatureStoreError(f"feature store {folder}: tensor {name!r} is {got}, meta.json records {shape}")
        if "cls" not in tensors or "labels" not in tensors:
            raise FeatureStoreError(f"feature store {folder}: needs tensors 'cls' and 'labels'")
        index = _read_index(folder / INDEX_FILE, folder)
        if len(index) != n or tensors["cls"].shape[0] != n:
            raise FeatureStoreError(
                f"feature store {folder}: index.csv has {len(index)} rows, cls has {tensors['cls'].shape[0]}, "
                f"meta.json records {n}"
            )
        known = {"cls", "labels", "patch_mean", "patch"}
        return cls_(
            folder=folder,
            cls=tensors["cls"],
            labels=tensors["labels"],
            index=index,
            meta=meta,
            patch_mean=tensors.get("patch_mean"),
            patch=tensors.get("patch"),
            extra={k: v for k, v in tensors.items() if k not in known},
        )


def _read_index(path: Path, folder: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FeatureStoreError(f"feature store {folder}: {INDEX_FILE} is missing")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or list(reader.fieldnames) != list(INDEX_FIELDS):
                raise FeatureStoreError(
                    f"feature store {folder}: {INDEX_FILE} header is {reader.fieldnames}, expected {list(INDEX_FIELDS)}"
                )
            return [dict(row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FeatureStoreError(f"feature store {folder}: cannot read {INDEX_FILE} ({exc})") from None

