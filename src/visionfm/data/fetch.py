"""Public data sets: a table, a verified download, safe extraction and a layout check (``visionfm datasets``).

``visionfm-processed`` is the original authors' preprocessed public data (IDRiD and OCTID for multi-modal
classification, DRIVE for vessel segmentation, in the vfm layouts), published as one Google Drive file.
The archive is downloaded into ``$VISIONFM_HOME/datasets`` (default ``~/.cache/visionfm/datasets``) with
the machinery of the weights (:mod:`visionfm.io.download`: a resumable part file, gdown for Drive, plain
HTTP(S) for ``--url``), its sha256 is recorded in ``<archive>.json`` on the first success and checked on
every later use, and it is unpacked safely (:func:`visionfm.io.archive.safe_extract`) into
``$VISIONFM_HOME/datasets/<name>``. The unpacked tree is then checked with the layout readers of
:mod:`visionfm.data.layouts`: every folder holding ``<split>_labels.txt`` (vfm classification / regression)
or ``<split>/images`` (segmentation / landmark pairs) is read; what was found and each problem is one line.

Tests (and mirrors) add entries with ``VISIONFM_DATASETS_REGISTRY=<file.json>``:
``{name: {"file": ..., "url": ... or "drive_id": ..., "description": ..., "licence": ...}}``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from visionfm.errors import ConfigError, DataFormatError, speaks_python
from visionfm.io.atomic import save_json_atomic
from visionfm.io.download import (
    download_drive,
    download_url,
    drive_page,
    finish_part,
    is_offline,
    offline_names,
    part_path,
    read_record,
    record_path,
    recorded_sha256,
    registry_with_overrides,
    visionfm_home,
)
from visionfm.io.safe_load import file_sha256

__all__ = [
    "PublicDataset",
    "DATASETS",
    "REGISTRY_ENV",
    "FetchReport",
    "dataset_registry",
    "datasets_dir",
    "archive_path",
    "dataset_path",
    "fetch_dataset",
    "check_layouts",
    "datasets_table",
]

log = logging.getLogger(__name__)

REGISTRY_ENV = "VISIONFM_DATASETS_REGISTRY"


@dataclass(frozen=True)
class PublicDataset:
    """One downloadable archive: its name, archive file name, where it comes from and what it holds."""

    name: str
    file: str
    drive_id: str | None = None
    url: str | None = None
    description: str = ""
    licence: str = "the terms of each source data set (see their pages)"

    @property
    def source_url(self) -> str:
        return self.url or drive_page(str(self.drive_id))


DATASETS: dict[str, PublicDataset] = {
    "visionfm-processed": PublicDataset(
        "visionfm-processed", "visionfm-processed.zip", drive_id="1QShoYrkhZetF41vmFuf6ds3I1W05YONk",
        description="the original's preprocessed public data sets (IDRiD, OCTID, DRIVE) in the vfm layouts",
        licence="the terms of IDRiD, OCTID and DRIVE (research use; see each data set's page)"),
}

_FIELDS = {"file", "drive_id", "url", "description", "licence"}


def dataset_registry() -> dict[str, PublicDataset]:
    """The official table plus the entries of ``$VISIONFM_DATASETS_REGISTRY`` (a JSON file), which win."""
    return registry_with_overrides(DATASETS, REGISTRY_ENV, _FIELDS, PublicDataset)


def _entry(name: str) -> PublicDataset:
    table = dataset_registry()
    folded = str(name).strip().lower()
    for key, entry in table.items():
        if folded in (key.lower(), entry.file.lower()):
            return entry
    raise ConfigError(f"unknown data set {name!r}; known: {', '.join(table)}")


def datasets_dir() -> Path:
    """``$VISIONFM_HOME/datasets``, default ``~/.cache/visionfm/datasets``."""
    return visionfm_home("datasets")


def archive_path(entry: PublicDataset) -> Path:
    return datasets_dir() / entry.file


def _hint(entry: PublicDataset) -> str:
    return (f"fetch it with `visionfm datasets fetch {entry.name}`, or download {entry.file} from "
            f"{entry.source_url} into {archive_path(entry)} and run that command")


@dataclass
class FetchReport:
    """Where the data set is, what was found in it and what is wrong (one line each)."""

    name: str
    path: Path
    found: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    sha256: str | None = None

    def lines(self) -> list[str]:
        return [f"found {x}" for x in self.found] + [f"problem: {x}" for x in self.problems]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# -- layouts -------------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _check_vfm(d: Path, rel: str, found: list[str], problems: list[str]) -> None:
    from visionfm.data.layouts.vfm import VFM_SPLITS, VFMDataset

    counts = []
    for split in VFM_SPLITS:
        if not (d / f"{split}_labels.txt").is_file():
            continue
        try:
            ds = VFMDataset(d, split, num_labels=None)
        except (DataFormatError, ConfigError, ValueError) as exc:
            problems.append(f"{rel}: {split}: {_one_line(exc)}")
            continue
        counts.append(f"{split} {len(ds)} ({ds.label_kind}, {ds.labels.shape[1]} label(s))")
    if counts:
        found.append(f"{rel}: vfm classification/regression labels: " + ", ".join(counts))


def _check_pairs(d: Path, rel: str, splits: list[str], found: list[str], problems: list[str]) -> None:
    from visionfm.data.layouts.segmentation import MASK_SUFFIXES, find_paired_samples

    counts = []
    for split in splits:
        try:
            samples = find_paired_samples(d, split, MASK_SUFFIXES)
        except (DataFormatError, ConfigError, ValueError) as exc:
            problems.append(f"{rel}: {split}: {_one_line(exc)}")
            continue
        if not samples:
            problems.append(f"{rel}: {split}/images holds no image with a label in {split}/labels")
            continue
        counts.append(f"{split} {len(samples)}")
    if counts:
        found.append(f"{rel}: segmentation/landmark pairs (images + labels): " + ", ".join(counts))


def check_layouts(root: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Every data set under ``root`` in a vfm layout, read with the layout readers: ``(found, problems)``,
    one line each. A folder with ``<split>_labels.txt`` is a vfm classification / regression data set; one
    with ``<split>/images`` is a paired (segmentation / landmark) data set; other folders are searched."""
    root = Path(root)
    found: list[str] = []
    problems: list[str] = []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith((".", "__MACOSX")))
        d = Path(here)
        rel = d.relative_to(root).as_posix() if d != root else d.name
        if any(f.endswith("_labels.txt") and not f.startswith(".") for f in files):
            _check_vfm(d, rel, found, problems)
            known = {f"{s}_labels.txt" for s in ("training", "val", "test")}
            odd = sorted(f for f in files if f.endswith("_labels.txt") and f not in known)
            if odd:
                problems.append(f"{rel}: label file(s) {', '.join(odd)} are not a vfm split "
                                "(expected training_labels.txt, val_labels.txt, test_labels.txt)")
            dirs[:] = []
            continue
        pair_splits = [x for x in dirs if (d / x / "images").is_dir()]
        if pair_splits:
            _check_pairs(d, rel, pair_splits, found, problems)
            dirs[:] = []
    if not found and not problems:
        problems.append(f"{root}: no data set in a vfm layout (<dataset>/<split>_labels.txt or "
                        "<dataset>/<split>/images + labels) was found")
    return found, problems


# -- fetching ----------------------------------------------------------------------------------------------------

Downloader = Callable[[PublicDataset, "str | None", Path], None]


def _default_downloader(entry: PublicDataset, url: str | None, part: Path) -> None:
    if url or entry.url:
        download_url(url or entry.url or "", part, DataFormatError)
    else:
        download_drive(entry.drive_id or "", part, DataFormatError)


def _check_archive(entry: PublicDataset, path: Path) -> str:
    """``path``'s sha256, checked against the record when there is one."""
    sha = file_sha256(path)
    recorded = recorded_sha256(path, DataFormatError)
    if recorded and recorded != sha:
        raise DataFormatError(
            f"{path}: sha256 {sha[:12]}… differs from the {recorded[:12]}… recorded in "
            f"{record_path(path).name} (corrupted or replaced); delete it and fetch it again with "
            f"`visionfm datasets fetch {entry.name}`")
    return sha


def _write_record(entry: PublicDataset, path: Path, sha: str, report: FetchReport) -> None:
    save_json_atomic({"name": entry.name, "file": entry.file, "sha256": sha, "size": path.stat().st_size,
                      "source": entry.source_url, "licence": entry.licence, "extracted_to": str(report.path),
                      "found": report.found, "problems": report.problems,
                      "verified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, record_path(path))


def dataset_path(name: str) -> FetchReport:
    """The extracted folder of ``name`` with its layout check; :class:`DataFormatError` (one line saying
    how to get it) when it is not there. A kept archive is checked against its recorded sha256."""
    entry = _entry(name)
    dest = datasets_dir() / entry.name
    archive = archive_path(entry)
    if not dest.is_dir():
        raise DataFormatError(f"data set {entry.name} is not downloaded: {_hint(entry)}")
    sha = _check_archive(entry, archive) if archive.is_file() else None
    found, problems = check_layouts(dest)
    return FetchReport(entry.name, dest, found, problems, sha)


@speaks_python
def fetch_dataset(name: str, url: str | None = None, downloader: Downloader | None = None) -> FetchReport:
    """Download ``name`` (from ``url`` when given) into :func:`datasets_dir`, check its sha256 (recorded on the
    first success), extract it safely into ``datasets_dir()/<name>`` and check the layouts found there.

    An archive already there is only checked and (when the folder is missing) extracted again."""
    entry = _entry(name)
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url: expected an http:// or https:// URL, got {url!r}")
    archive = archive_path(entry)
    dest = datasets_dir() / entry.name
    if not archive.is_file():
        if is_offline():
            raise DataFormatError(f"offline ({offline_names()} set): download {entry.file} from "
                                    f"{url or entry.source_url} into {archive}, then run "
                                    f"`visionfm datasets fetch {entry.name}` again")
        archive.parent.mkdir(parents=True, exist_ok=True)
        part = part_path(archive)  # kept when a download breaks off: the next try resumes it
        (downloader or _default_downloader)(entry, url, part)
        from visionfm.io.archive import archive_kind

        if archive_kind(part) is None:
            part.unlink()
            raise DataFormatError(f"the download of {entry.name} from {url or entry.source_url} is not a zip or "
                                    "tar archive (an HTML page? a quota message?); it was not kept")
        sha = file_sha256(part)
        recorded = recorded_sha256(archive, DataFormatError)
        if recorded and recorded != sha:
            raise DataFormatError(
                f"the download of {entry.name} has sha256 {sha[:12]}…, not the {recorded[:12]}… recorded in "
                f"{record_path(archive)} (the file at {url or entry.source_url} changed or is corrupted); it is "
                f"kept at {part} — delete the record to accept it")
        finish_part(part, archive)
    else:
        sha = _check_archive(entry, archive)
    if not dest.is_dir() or read_record(archive, DataFormatError) is None:
        from visionfm.io.archive import safe_extract

        n = safe_extract(archive, dest, DataFormatError)
        log.info("extracted %d files of %s into %s", n, archive.name, dest)
    found, problems = check_layouts(dest)
    report = FetchReport(entry.name, dest, found, problems, sha)
    if read_record(archive, DataFormatError) is None:
        _write_record(entry, archive, sha, report)
    return report


def datasets_table() -> list[dict[str, Any]]:
    """One row per entry: name, archive file, source, description, licence, whether downloaded and extracted."""
    rows = []
    for entry in dataset_registry().values():
        archive = archive_path(entry)
        rec = read_record(archive, DataFormatError) if archive.is_file() else None
        dest = datasets_dir() / entry.name
        row = asdict(entry)
        row.update(source=entry.source_url, archive=str(archive), downloaded=archive.is_file(),
                   extracted=dest.is_dir(), path=str(dest), sha256=(rec or {}).get("sha256"),
                   size=archive.stat().st_size if archive.is_file() else None)
        rows.append(row)
    return rows
