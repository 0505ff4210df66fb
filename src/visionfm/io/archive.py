"""Safe extraction of a downloaded zip or tar archive into a new folder.

Every member is checked before anything is written: absolute paths, ``..`` components, drive letters,
links (symbolic or hard) and special files (devices, FIFOs) are refused, naming the member. The archive
is unpacked into a temporary sibling of the destination, which replaces the destination only once
everything is out (:func:`visionfm.io.atomic.replace_dir`), so a failure leaves no half folder.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from visionfm.errors import VisionFMError
from visionfm.io.atomic import atomic_dir

__all__ = ["archive_kind", "safe_extract"]


def archive_kind(path: str | os.PathLike[str]) -> str | None:
    """``"zip"`` or ``"tar"`` (plain, gzip, bzip2, xz) by content, or ``None``."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError:
        return None
    return None


def _check_name(name: str, archive: Path, error: type[VisionFMError]) -> PurePosixPath:
    norm = name.replace("\\", "/")
    rel = PurePosixPath(norm)
    if norm.startswith("/") or rel.is_absolute() or (len(norm) > 1 and norm[1] == ":"):
        raise error(f"{archive}: member {name!r} has an absolute path; refusing to extract the archive")
    if ".." in rel.parts:
        raise error(f"{archive}: member {name!r} climbs out of the folder ('..'); refusing to extract the archive")
    return rel


def _extract_zip(archive: Path, into: Path, error: type[VisionFMError]) -> int:
    n = 0
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_name(info.filename, archive, error)
            mode = (info.external_attr >> 16) & 0o170000
            if mode and mode not in (0o100000, 0o040000):  # a symbolic link or special file (Unix attributes)
                raise error(f"{archive}: member {info.filename!r} is a link or special file; refusing to extract")
        for info in infos:
            target = into / _check_name(info.filename, archive, error)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            n += 1
    return n


def _extract_tar(archive: Path, into: Path, error: type[VisionFMError]) -> int:
    n = 0
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            _check_name(m.name, archive, error)
            if not (m.isfile() or m.isdir()):
                raise error(f"{archive}: member {m.name!r} is a link or special file; refusing to extract")
        for m in members:
            target = into / _check_name(m.name, archive, error)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            if src is None:
                raise error(f"{archive}: member {m.name!r} cannot be read")
            with src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            n += 1
    return n


def safe_extract(archive: str | os.PathLike[str], dest: str | os.PathLike[str],
                 error: type[VisionFMError] = VisionFMError) -> int:
    """Unpack ``archive`` (zip or tar) to ``dest``, replacing it atomically; returns the number of files.

    Raises ``error`` (one line naming the archive and the member) for an unknown format, a member with an
    absolute path or ``..``, a link or a special file, or an archive that cannot be read."""
    archive, dest = Path(archive), Path(dest)
    kind = archive_kind(archive)
    if kind is None:
        raise error(f"{archive}: not a zip or tar archive")
    with atomic_dir(dest, suffix=".extract") as tmp:
        try:
            n = (_extract_zip if kind == "zip" else _extract_tar)(archive, tmp, error)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
            raise error(f"{archive}: the {kind} archive cannot be read ({exc}); delete it and download it again"
                        ) from None
    return n
