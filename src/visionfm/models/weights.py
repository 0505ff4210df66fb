"""The official VisionFM encoder weights: a table, where each file lives locally, and a verified download.

The authors release one ViT-B/16 encoder per modality on Google Drive (``VFM_<Modality>_weights.pth``,
key ``teacher``, licence CC BY-NC 4.0). Files live in ``$VISIONFM_HOME/weights`` (default
``~/.cache/visionfm/weights``). A download goes to a temporary file in that folder (kept between tries,
so an interrupted download resumes), is verified by loading it with
:func:`~visionfm.models.loading.load_encoder` (the entry's arch and key), and only then renamed into place;
its sha256 is recorded in ``<file>.json`` next to it on the first success and checked on every later use.

A modality name (``Fundus``, ``slit-lamp``, ``CFP``...) given where encoder weights are expected resolves
to the local official file (:func:`resolve_weights`); a real path always wins over a name. Offline
(``HF_HUB_OFFLINE=1`` or ``VISIONFM_OFFLINE=1``) nothing touches the network: one line says what to
download from where and where to put it.

Tests (and mirrors) add entries with ``VISIONFM_WEIGHTS_REGISTRY=<file.json>``: a JSON object
``{name: {"file": ..., "url": ... or "drive_id": ..., "arch": ..., "patch_size": ..., "checkpoint_key": ...}}``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from visionfm.errors import CheckpointError, ConfigError
from visionfm.io.atomic import save_json_atomic
from visionfm.io.download import (
    OFFLINE_ENVS,
    download_drive,
    download_url,
    drive_page,
    finish_part,
    part_path,
    read_record,
    record_path,
    recorded_sha256,
    registry_with_overrides,
    visionfm_home,
)
from visionfm.io.download import is_offline as is_offline
from visionfm.io.safe_load import file_sha256

__all__ = [
    "OfficialWeights",
    "OFFICIAL_WEIGHTS",
    "LICENCE",
    "registry",
    "lookup",
    "weights_dir",
    "local_path",
    "is_offline",
    "download_hint",
    "weights_path",
    "fetch_weights",
    "resolve_weights",
    "weights_table",
]

log = logging.getLogger(__name__)

LICENCE = "CC BY-NC 4.0"
REGISTRY_ENV = "VISIONFM_WEIGHTS_REGISTRY"


@dataclass(frozen=True)
class OfficialWeights:
    """One downloadable encoder: its name, file name, where it comes from and what loading it needs."""

    name: str
    file: str
    drive_id: str | None = None
    url: str | None = None  # a direct http(s) URL (a mirror; the tests' loopback server)
    arch: str = "vit_base"
    patch_size: int = 16
    checkpoint_key: str = "teacher"
    licence: str = LICENCE

    @property
    def source_url(self) -> str:
        """Where a person downloads the file: the direct URL, else the Google Drive page."""
        if self.url:
            return self.url
        return drive_page(str(self.drive_id))


_DRIVE_IDS = {
    "Fundus": "13uWm0a02dCWyARUcrCdHZIcEgRfBmVA4",
    "OCT": "1o6E-ine2QLx2pxap-c77u-SU0FjxwypA",
    "FFA": "128izBUNV00Ojb9w9Dq3GhBvhWqzU-mla",
    "Ultrasound": "1IlD0snowxdEVvxmiIBZGR0D9uOcrCT2D",
    "External": "16zGHTD4ZcGAYW382kKHBw3TU6D1OtvTD",
    "SlitLamp": "1pemWDkGoZYlqLQ6ooFINktyk8xnv9wY_",
    "MRI": "1fcfylnOWhfnZHBAKT9pQPufyS5ZYCXu0",
    "UBM": "1q2fVOgFBnWNu1BsXaza1A-OIcCiifNUQ",
}

OFFICIAL_WEIGHTS: dict[str, OfficialWeights] = {
    name: OfficialWeights(name, f"VFM_{name}_weights.pth", drive_id=fid) for name, fid in _DRIVE_IDS.items()
}

_FIELDS = {"file", "drive_id", "url", "arch", "patch_size", "checkpoint_key", "licence"}


def registry() -> dict[str, OfficialWeights]:
    """The official table plus the entries of ``$VISIONFM_WEIGHTS_REGISTRY`` (a JSON file), which win."""
    return registry_with_overrides(OFFICIAL_WEIGHTS, REGISTRY_ENV, _FIELDS, OfficialWeights)


def lookup(name: str) -> OfficialWeights | None:
    """The entry ``name`` names (case-insensitive; the modality aliases of :mod:`visionfm.data.modalities`,
    and the file name itself), or ``None``."""
    if not isinstance(name, str) or not name.strip():
        return None
    table = registry()
    folded = name.strip().lower()
    for key, entry in table.items():
        if folded in (key.lower(), entry.file.lower()):
            return entry
    from visionfm.data.modalities import canonical_modality

    try:
        return table.get(canonical_modality(name))
    except ConfigError:
        return None


def _entry(name: str) -> OfficialWeights:
    entry = lookup(name)
    if entry is None:
        raise ConfigError(f"unknown weights name {name!r}; known: {', '.join(registry())} "
                          "(modality names and their spellings are accepted, case-insensitive)")
    return entry


def weights_dir() -> Path:
    """``$VISIONFM_HOME/weights``, default ``~/.cache/visionfm/weights``."""
    return visionfm_home("weights")


def local_path(entry: OfficialWeights) -> Path:
    return weights_dir() / entry.file


def download_hint(entry: OfficialWeights) -> str:
    """One line: the command that fetches the file, or where to download it by hand and where to put it."""
    return (f"download it with `visionfm weights fetch {entry.name}` or from {entry.source_url} "
            f"into {local_path(entry)}")


def _read_record(path: Path) -> dict[str, Any] | None:
    return read_record(path, CheckpointError)


def _verify_load(entry: OfficialWeights, path: Path, shown: Path) -> None:
    from visionfm.models.loading import load_encoder

    try:
        load_encoder(path, arch=entry.arch, checkpoint_key=entry.checkpoint_key, patch_size=entry.patch_size,
                     hash_file=False)
    except CheckpointError as exc:
        raise CheckpointError(f"{shown} does not load as {entry.name} weights ({entry.arch}/{entry.patch_size}, "
                              f"key {entry.checkpoint_key!r}): {' '.join(str(exc).splitlines())}") from None


def _check(entry: OfficialWeights, path: Path) -> Path:
    """``path`` checked against its recorded sha256; without a record it is verified by loading and recorded."""
    recorded = recorded_sha256(path, CheckpointError)
    sha = file_sha256(path)
    if recorded:
        if recorded != sha:
            raise CheckpointError(
                f"{path}: sha256 {sha[:12]}… differs from the {recorded[:12]}… recorded in "
                f"{record_path(path).name} (corrupted or replaced); delete it and "
                f"{download_hint(entry).replace('download it', 'download it again', 1)}")
        return path
    _verify_load(entry, path, path)
    _write_record(entry, path, sha)
    return path


def _write_record(entry: OfficialWeights, path: Path, sha: str) -> None:
    save_json_atomic({"name": entry.name, "file": entry.file, "sha256": sha, "size": path.stat().st_size,
                      "source": entry.source_url, "arch": entry.arch, "patch_size": entry.patch_size,
                      "checkpoint_key": entry.checkpoint_key, "licence": entry.licence,
                      "verified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, record_path(path))


def weights_path(name: str) -> Path:
    """The verified local file of ``name``; :class:`CheckpointError` (one line saying what to download from
    where into which path) when it is not there."""
    entry = _entry(name)
    path = local_path(entry)
    if not path.is_file():
        raise CheckpointError(f"{entry.file} ({entry.name}) is not downloaded: {download_hint(entry)}")
    return _check(entry, path)


def _download_url(url: str, part: Path) -> None:
    download_url(url, part, CheckpointError)


def _download_drive(drive_id: str, out: Path) -> None:
    download_drive(drive_id, out, CheckpointError)


Downloader = Callable[[OfficialWeights, str | None, Path], None]


def _default_downloader(entry: OfficialWeights, url: str | None, part: Path) -> None:
    if url or entry.url:
        _download_url(url or entry.url or "", part)
    else:
        _download_drive(entry.drive_id or "", part)


def fetch_weights(name: str, url: str | None = None, downloader: Downloader | None = None) -> Path:
    """Download ``name`` (from ``url`` when given) into :func:`weights_dir`, verify and record it; an already
    present file is only checked. Returns the local path."""
    entry = _entry(name)
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url: expected an http:// or https:// URL, got {url!r}")
    path = local_path(entry)
    if path.is_file():
        return _check(entry, path)
    if is_offline():
        raise CheckpointError(f"offline ({' or '.join(OFFLINE_ENVS)} set): download {entry.file} from "
                              f"{url or entry.source_url} into {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(path)  # kept when a download fails: the next try resumes it
    (downloader or _default_downloader)(entry, url, part)
    _verify_load(entry, part, path)
    sha = file_sha256(part)
    finish_part(part, path)
    _write_record(entry, path, sha)
    log.info("fetched %s (%s, sha256 %s) into %s", entry.name, entry.licence, sha, path)
    return path


def resolve_weights(weights: Any) -> Any:
    """``weights`` as given when it is a path that exists (a real path wins), ``random``, empty or no known name;
    the verified local official file when it names one (``Fundus``, ``slit-lamp``...); the local copy (Hugging
    Face cache) of a Hub reference ``org/name[@revision][:file]`` (:func:`visionfm.io.hub.hub_weights`). A named
    file that is not downloaded is a :class:`CheckpointError` saying how to get it."""
    if weights is None or isinstance(weights, Path):
        return weights
    text = str(weights)
    if text.strip() in ("", "random") or Path(text).expanduser().exists():
        return weights
    from visionfm.io.hub import hub_weights, parse_hub_ref

    ref = parse_hub_ref(text)
    if ref is not None:  # org/name[@revision][:file], not a local path: the Hugging Face Hub (or its cache)
        return hub_weights(ref)
    if os.sep in text or "/" in text:
        return weights
    entry = lookup(text)
    if entry is None:
        return weights
    return weights_path(entry.name)


def weights_table() -> list[dict[str, Any]]:
    """One row per entry: name, file, arch, patch, key, licence, source, whether present, path, size, sha256."""
    rows = []
    for entry in registry().values():
        path = local_path(entry)
        rec = _read_record(path) if path.is_file() else None
        row = asdict(replace(entry))
        row.update(source=entry.source_url, present=path.is_file(), path=str(path),
                   size=path.stat().st_size if path.is_file() else None,
                   sha256=(rec or {}).get("sha256"))
        rows.append(row)
    return rows
