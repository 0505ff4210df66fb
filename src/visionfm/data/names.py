"""Display names for a task's outputs: ``classes.txt`` / ``landmarks.txt`` beside the labels.

A names file holds one name per line, in output order (line 1 names class / landmark 0); blank lines
and lines starting with ``#`` are skipped. It is looked for at the data root and in each dataset folder
(``<root>/classes.txt``, ``<root>/<dataset>/classes.txt``); every file found must list the same names.
``visionfm extract`` copies a dataset's file next to its feature stores, so ``--features`` runs find it too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from visionfm.errors import ConfigError, DataFormatError

__all__ = ["CLASSES_FILE", "LANDMARKS_FILE", "read_names_file", "find_names_file", "resolve_names"]

CLASSES_FILE = "classes.txt"
LANDMARKS_FILE = "landmarks.txt"


def read_names_file(path: str | os.PathLike[str]) -> list[str]:
    """The names in ``path`` (one per line); a duplicate or an empty file is a :class:`DataFormatError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"cannot read the names file ({exc.__class__.__name__}: {exc})", path) from None
    names: list[str] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(text.splitlines(), start=1):
        name = raw.strip()
        if not name or name.startswith("#"):
            continue
        if name in seen:
            raise DataFormatError(f"name {name!r} repeats line {seen[name]}; expected one distinct name per line",
                                  path, i)
        seen[name] = i
        names.append(name)
    if not names:
        raise DataFormatError("no names in the file; expected one name per line, in output order", path)
    return names


def find_names_file(root: str | os.PathLike[str] | None, filename: str = CLASSES_FILE,
                    datasets: Sequence[str] | None = None) -> tuple[list[str], Path] | None:
    """``(names, first file)`` from ``<root>/<filename>`` and ``<root>/<dataset>/<filename>``, or ``None``.

    ``datasets`` limits the dataset folders searched. Files that disagree are a :class:`DataFormatError`
    naming both.
    """
    if root is None or not Path(root).is_dir():
        return None
    root = Path(root)
    candidates = [root / filename]
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if datasets:
        wanted = set(datasets)
        subdirs = [p for p in subdirs if p.name in wanted]
    candidates += [p / filename for p in subdirs]
    found: tuple[list[str], Path] | None = None
    for path in candidates:
        if not path.is_file():
            continue
        names = read_names_file(path)
        if found is None:
            found = (names, path)
        elif names != found[0]:
            raise DataFormatError(f"lists {names}, but {found[1]} lists {found[0]}; the names files of one run "
                                  "must agree", path)
    return found


def resolve_names(given: Sequence[str] | None, root: str | os.PathLike[str] | None, n: int, *, option: str,
                  filename: str = CLASSES_FILE, what: str = "classes", datasets: Sequence[str] | None = None,
                  default: Sequence[str] | None = None) -> list[str]:
    """The ``n`` output names: ``given`` (the option), else a names file under ``root``, else ``default``.

    A count that does not fit ``n`` is an error naming the option or the file; a given option that differs
    from a names file found under ``root`` wins (the file is then only reported by the caller's log).
    """
    if given:
        names = [str(x) for x in given]
        if len(names) != n:
            raise ConfigError(f"--{option}: {len(names)} name(s) given for the {n} {what} of this task; expected "
                              f"{n} names in output order")
        if len(set(names)) != len(names):
            raise ConfigError(f"--{option}: names must be distinct, got {names}")
        return names
    found = find_names_file(root, filename, datasets)
    if found is not None:
        names, path = found
        if len(names) != n:
            raise DataFormatError(f"{len(names)} name(s) for the {n} {what} of this task; expected {n} lines, "
                                  "one name per output in order", path)
        return names
    if default is None:
        raise ConfigError(f"no names: pass --{option} or put a {filename} beside the labels")
    return list(default)
