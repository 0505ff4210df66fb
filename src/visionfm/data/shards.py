"""Pretraining images as tar shards in the WebDataset layout, read back at random (indexed tars).

``visionfm prepare --format shards`` down-sizes the images into ``DST/images/`` as usual (the resumable
step), then packs them into ``DST/shard-000000.tar``, ... Each sample is two members, ``<key>.jpg`` and
``<key>.json`` (``{"modality", "source", "original_size", "size"}``), the layout that ``webdataset``,
``wids`` and NVIDIA DALI read. ``DST/shards.json`` is the index: a ``wids`` shard list (``shardlist`` of
``{"url", "nsamples", "filesize"}``) plus, per shard, its modality counts and sha256, and the totals.

Shards are written under a temporary name and renamed into place; an interrupted pack keeps the finished
shards (their sha256 is checked) and writes the rest. :class:`ShardImages` reads the index and opens each
shard with ``wids``' memory-mapped indexed tar reader, so any sample is one seek away and the pretraining
sampler, per-sample seeding and mid-epoch resume work exactly as with folders.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Sequence

from visionfm.data.images import SampleDataset, load_image_bytes
from visionfm.data.layouts.pretrain import PretrainImages, _canonical_or_none
from visionfm.errors import ConfigError, DataFormatError
from visionfm.io.atomic import atomic_path, save_json_atomic

__all__ = ["SHARD_INDEX", "INDEX_KIND", "parse_size", "pack_shards", "is_shard_index", "ShardImages"]

SHARD_INDEX = "shards.json"
INDEX_KIND = "wids-shard-index-v1"  # what wids.ShardListDataset reads; our fields are extra keys
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}


def parse_size(text: str | int) -> int:
    """``"1GB"`` / ``"500MB"`` / ``"64MiB"`` / ``123`` → bytes (positive)."""
    if isinstance(text, int):
        value = text
    else:
        t = str(text).strip().upper().replace(" ", "")
        num = t.rstrip("KMGTIB")
        unit = t[len(num):]
        if unit not in _UNITS or not num:
            raise ConfigError(f"--shard_size {text!r}: expected a size such as 1GB, 500MB or 64MiB")
        try:
            value = int(float(num) * _UNITS[unit])
        except ValueError:
            raise ConfigError(f"--shard_size {text!r}: expected a size such as 1GB, 500MB or 64MiB") from None
    if value <= 0:
        raise ConfigError(f"--shard_size {text!r}: must be positive")
    return value


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _key(rel: Path) -> str:
    # WebDataset splits a member name at the first dot of its base name: keep dots out of the key
    return rel.with_suffix("").as_posix().replace(".", "_")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: the same images give the same bytes
    tar.addfile(info, io.BytesIO(data))


def pack_shards(images_root: str | os.PathLike[str], dst: str | os.PathLike[str], shard_bytes: int,
                sources: dict[Path, tuple[Path, tuple[int, int] | None]] | None = None) -> dict[str, Any]:
    """Pack the prepared ``images_root/<Modality>/...`` images into shards under ``dst``; returns the index.

    Samples are ordered by modality (request order of the folders) then path, and cut into shards of at most
    ``shard_bytes`` of image data (a larger image gets a shard of its own). ``sources`` maps a prepared file
    to its source file and original ``(width, height)`` for the per-sample JSON.
    """
    root, dst = Path(images_root), Path(dst)
    modalities = [d.name for d in sorted(root.iterdir()) if d.is_dir() and _canonical_or_none(d.name) == d.name]
    if not modalities:
        raise DataFormatError("no prepared modality folders to pack", root)
    images = PretrainImages(root, modalities)
    plan: list[list[tuple[Path, str]]] = [[]]
    size = 0
    for path, modality in images.samples:
        n = path.stat().st_size
        if plan[-1] and size + n > shard_bytes:
            plan.append([])
            size = 0
        plan[-1].append((path, modality))
        size += n
    old: dict[str, Any] = {}
    index_path = dst / SHARD_INDEX
    progress_path = dst / (SHARD_INDEX + ".partial")
    for p in (index_path, progress_path):
        if p.is_file():
            try:
                old.update({s["url"]: s for s in json.loads(p.read_text(encoding="utf-8")).get("shardlist", [])})
            except (json.JSONDecodeError, KeyError, TypeError):
                pass  # an unreadable earlier index: every shard is written again
    shards: list[dict[str, Any]] = []
    for i, members in enumerate(plan):
        name = f"shard-{i:06d}.tar"
        out = dst / name
        keys = [_key(p.relative_to(root)) for p, _ in members]
        prev = old.get(name)
        if prev and out.is_file() and prev.get("keys_sha256") == _keys_hash(keys) and _sha256(out) == prev["sha256"]:
            shards.append(prev)  # finished by an earlier (interrupted) run
            continue
        counts: dict[str, int] = {}
        with atomic_path(out) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for (path, modality), key in zip(members, keys):
                src, orig = (sources or {}).get(path, (path, None))
                from PIL import Image

                with Image.open(path) as im:
                    out_size = list(im.size)
                meta = {"modality": modality, "source": str(src), "original_size": list(orig) if orig else None,
                        "size": out_size}
                _add(tar, key + ".jpg", path.read_bytes())
                _add(tar, key + ".json", json.dumps(meta, sort_keys=True).encode())
                counts[modality] = counts.get(modality, 0) + 1
        runs: list[list[Any]] = []  # [[modality, n], ...] in member order: readers need no per-sample lookup
        for _, modality in members:
            if runs and runs[-1][0] == modality:
                runs[-1][1] += 1
            else:
                runs.append([modality, 1])
        shards.append({"url": name, "nsamples": len(members), "filesize": out.stat().st_size,
                       "sha256": _sha256(out), "modalities": counts, "modality_runs": runs,
                       "keys_sha256": _keys_hash(keys)})
        save_json_atomic({"shardlist": shards}, progress_path)  # what a resumed pack may keep
    totals: dict[str, int] = {}
    for s in shards:
        for m, c in s["modalities"].items():
            totals[m] = totals.get(m, 0) + c
    index = {"__kind__": INDEX_KIND, "wids_version": 1, "name": dst.name, "shardlist": shards,
             "n_images": sum(s["nsamples"] for s in shards), "modality_counts": totals,
             "format": "webdataset tar: <key>.jpg + <key>.json {modality, source, original_size, size}"}
    for stale in sorted(dst.glob("shard-*.tar")):
        if stale.name not in {s["url"] for s in shards}:
            stale.unlink()  # left from an earlier pack with more shards
    save_json_atomic(index, index_path)
    progress_path.unlink(missing_ok=True)
    return index


def _keys_hash(keys: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def is_shard_index(path: str | os.PathLike[str]) -> Path | None:
    """The shard index ``path`` names (the file itself, or a folder holding ``shards.json``; a ``file://`` URL
    is the same local or mounted path), else ``None``."""
    text = os.fspath(path)
    if text.startswith("file://"):
        from urllib.parse import unquote, urlparse

        text = unquote(urlparse(text).path)
    p = Path(text)
    if p.is_file() and p.name.endswith(".json"):
        return p
    if p.is_dir() and (p / SHARD_INDEX).is_file():
        return p / SHARD_INDEX
    return None


class ShardImages(PretrainImages):
    """:class:`~visionfm.data.layouts.pretrain.PretrainImages` read from a shard index (same samples API:
    ``(image, modality)``, :meth:`modality_counts`, :meth:`sample_weights`). Every shard is opened lazily,
    memory-mapped by ``wids``, once per process (DataLoader workers open their own); the samples and
    their modalities come from the index (``modality_runs``), so start-up reads no shard."""

    def __init__(self, index: str | os.PathLike[str], modalities: Sequence[str] | str, on_error: str = "fail",
                 min_pixels: int = 0, verify: bool = False) -> None:
        SampleDataset.__init__(self, on_error)
        path = is_shard_index(index)
        if path is None:
            raise DataFormatError(f"not a shard index (expected a {SHARD_INDEX} or a folder holding one)", index)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            shardlist = list(doc["shardlist"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataFormatError(f"not a readable shard index ({exc.__class__.__name__}: {exc})", path) from None
        self.root, self.index_path = path.parent, path
        self.min_pixels, self.defer_jpeg, self.transform = int(min_pixels), False, None
        if isinstance(modalities, str):
            modalities = [modalities]
        wanted = [_canonical_or_none(m) for m in modalities]
        if None in wanted:
            raise ConfigError(f"unknown modality in {list(modalities)}")
        self.modalities = list(dict.fromkeys(m for m in wanted if m))
        self.files = [self.root / s["url"] for s in shardlist]
        for f, s in zip(self.files, shardlist):
            if not f.is_file():
                raise DataFormatError(f"shard {s['url']} listed in the index is missing", f)
            if verify and _sha256(f) != s.get("sha256"):
                raise DataFormatError("sha256 differs from the index (a damaged or replaced shard)", f)
        self._readers: dict[int, Any] = {}
        # (shard, member index) per sample, with its modality, from the index's runs: no shard is opened here
        self.samples: list[tuple[tuple[int, int], str]] = []
        found = {m: 0 for m in self.modalities}
        for si, s in enumerate(shardlist):
            runs = s.get("modality_runs")
            if not isinstance(runs, list) or sum(int(n) for _, n in runs) != int(s.get("nsamples", -1)):
                raise DataFormatError(f"shard {s.get('url')}: the index lists no modality_runs matching nsamples "
                                      "(written by another tool? pack it with visionfm prepare --format shards)", path)
            j = 0
            for modality, n in runs:
                if modality in found:
                    found[modality] += int(n)
                    self.samples.extend(((si, j + k), modality) for k in range(int(n)))
                j += int(n)
        missing = [m for m, c in found.items() if c == 0]
        if missing:
            raise DataFormatError(f"the shards hold no images of {', '.join(missing)} (they hold "
                                  f"{', '.join(doc.get('modality_counts', {})) or 'none'})", path)
        self.folders = {}

    def _reader(self, si: int) -> Any:
        reader = self._readers.get(si)
        if reader is None:
            from wids.wids import IndexedTarSamples

            reader = self._readers[si] = IndexedTarSamples(path=str(self.files[si]))
        return reader

    @staticmethod
    def _member(sample: dict[str, Any], ext: str) -> Any:
        data = sample.get(ext, sample.get("." + ext))
        return data.getvalue() if hasattr(data, "getvalue") else data

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"] = {}  # memory maps stay in the process that opened them
        return state

    def _load(self, index: int) -> Any:
        (si, j), modality = self.samples[index]
        sample = self._reader(si)[j]
        name = f"{self.files[si].name}:{sample.get('__key__')}.jpg"
        return load_image_bytes(self._member(sample, "jpg"), name, self.min_pixels), modality
