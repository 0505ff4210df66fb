"""Downloading one file safely: resumable HTTP(S), Google Drive through gdown, sha256 records, offline mode.

Shared by the official encoder weights (:mod:`visionfm.models.weights`) and the public data sets
(:mod:`visionfm.data.fetch`). Bytes go to a ``part`` file next to the destination, kept when a
download breaks off (the next try resumes it); the caller checks the part file and then moves it into
place with :func:`finish_part`, so the destination is never half a file. Errors are raised as the
caller's error type (``error=``), one line each.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from visionfm.errors import ConfigError, VisionFMError

_T = TypeVar("_T")

__all__ = [
    "HOME_ENV",
    "visionfm_home",
    "registry_with_overrides",
    "OFFLINE_ENVS",
    "is_offline",
    "offline_names",
    "drive_page",
    "download_url",
    "download_drive",
    "part_path",
    "finish_part",
    "record_path",
    "read_record",
    "recorded_sha256",
]

OFFLINE_ENVS = ("HF_HUB_OFFLINE", "VISIONFM_OFFLINE")


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``VISIONFM_OFFLINE`` is set to a true value (read on every call)."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in OFFLINE_ENVS)


def offline_names() -> str:
    return " or ".join(OFFLINE_ENVS)


def drive_page(drive_id: str) -> str:
    """The page a person opens to download a Google Drive file."""
    return f"https://drive.google.com/file/d/{drive_id}/view"


def part_path(path: str | os.PathLike[str]) -> Path:
    """``.<name>.part`` next to ``path``: where a download collects its bytes."""
    path = Path(path)
    return path.with_name(f".{path.name}.part")


def download_url(url: str, part: Path, error: type[VisionFMError] = VisionFMError) -> None:
    """``url`` into ``part``, resuming from its size with an HTTP Range request when it already exists."""
    import urllib.error
    import urllib.request

    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "visionfm", **({"Range": f"bytes={have}-"} if have else {})}
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status = getattr(resp, "status", 200)
            mode = "ab" if have and status == 206 else "wb"
            with open(part, mode) as fh:
                while block := resp.read(1 << 20):
                    fh.write(block)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the range starts at the end: the part file is complete
            return
        raise error(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise error(f"download of {url} failed ({exc}); run the same command again to resume") from None


def download_drive(drive_id: str, out: Path, error: type[VisionFMError] = VisionFMError) -> None:
    """The Google Drive file ``drive_id`` into ``out`` through gdown (which resumes its own partial file)."""
    try:
        import gdown
    except ImportError:
        raise error("downloading from Google Drive needs gdown (pip install 'gdown>=5'); "
                    "or pass --url, or download the file by hand") from None
    try:  # resume=True: gdown keeps its partial file next to ``out`` and continues it on the next try
        result = gdown.download(id=drive_id, output=str(out), quiet=False, resume=True)
    except Exception as exc:  # gdown raises its own error types (FileURLRetrievalError...)
        raise error(f"Google Drive download of {drive_id} failed: {' '.join(str(exc).split())}; "
                    "run the same command again to resume") from None
    if result is None or not out.is_file():
        raise error(f"Google Drive download of {drive_id} failed (gdown returned nothing)")


def finish_part(part: Path, path: Path) -> None:
    """Flush ``part`` to disk and rename it to ``path`` (atomic on one file system)."""
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(part, path)


def record_path(path: str | os.PathLike[str]) -> Path:
    """``<file>.json`` next to ``path``: its recorded sha256 and where it came from."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_record(path: str | os.PathLike[str], error: type[VisionFMError] = VisionFMError) -> dict[str, Any] | None:
    """The record of ``path`` (``<file>.json``), or ``None`` when there is none."""
    rec = record_path(path)
    if not rec.is_file():
        return None
    try:
        data = json.loads(rec.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{rec}: not valid JSON ({exc}); delete it to verify {Path(path).name} again") from None
    return data if isinstance(data, dict) else None


def recorded_sha256(path: str | os.PathLike[str], error: type[VisionFMError] = VisionFMError) -> str | None:
    """The sha256 recorded for ``path`` (``None``: no record, or one without a sha256)."""
    rec = read_record(path, error)
    return str(rec["sha256"]) if rec is not None and rec.get("sha256") else None


def registry_with_overrides(table: Mapping[str, _T], env: str, fields: set[str],
                            make: Callable[..., _T]) -> dict[str, _T]:
    """``table`` plus the entries of the JSON file named by ``$env`` (``{name: {file, url or drive_id, ...}}``),
    which win; ``make(name, **fields)`` builds an entry. A bad file or entry is one :class:`ConfigError` line."""
    out = dict(table)
    extra = os.environ.get(env)
    if not extra:
        return out
    try:
        data = json.loads(Path(extra).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{env}={extra}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{env}={extra}: expected a JSON object {{name: {{file, url or drive_id, ...}}}}")
    for name, entry in data.items():
        if not isinstance(entry, dict) or not entry.get("file") or not (entry.get("url") or entry.get("drive_id")):
            raise ConfigError(f"{env}={extra}: entry {name!r} needs 'file' and 'url' or 'drive_id'")
        unknown = set(entry) - fields
        if unknown:
            raise ConfigError(f"{env}={extra}: entry {name!r} has unknown keys {sorted(unknown)}")
        if Path(str(entry["file"])).name != str(entry["file"]) or Path(str(name)).name != str(name):
            raise ConfigError(f"{env}={extra}: entry {name!r}: the name and 'file' must be bare file names")
        out[str(name)] = make(str(name), **entry)
    return out


HOME_ENV = "VISIONFM_HOME"


def visionfm_home(sub: str) -> Path:
    """``$VISIONFM_HOME/<sub>``, default ``~/.cache/visionfm/<sub>`` (weights, datasets)."""
    home = os.environ.get(HOME_ENV)
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "visionfm") / sub
