"""What a ``visionfm serve`` client may read in an error: no absolute server path, no traceback.

:class:`Redactor` rewrites a message meant for a client: the ``--models`` folder and each model folder
become their relative names (as the page shows them), other absolute paths on this server (the home, the
temporary and the package folders, ``/proc/self/fd/N`` of an upload, any path whose first component is
an existing top-level folder) their last component, and only the first line of a message is kept. The
full message stays in the server log.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from pathlib import Path

__all__ = ["Redactor", "error_id"]

# an absolute POSIX path (not part of a word or a URL), or a Windows drive path
_ABS_PATH = re.compile(r"(?<![\w.:/~-])(/(?:[\w.@+~-]+/)*[\w.@+~-]*|[A-Za-z]:\\[^\s'\"]*)")
_MAX_LEN = 500


def error_id() -> str:
    """A short random id that ties a client's error message to the server-log entry with the details."""
    return uuid.uuid4().hex[:8]


class Redactor:
    """Rewrites client messages; ``known`` maps server paths to what a client may see instead."""

    def __init__(self, known: dict[str | os.PathLike[str], str] | None = None) -> None:
        pairs: dict[str, str] = {}
        for path, shown in (known or {}).items():
            for form in {str(path), str(Path(path).expanduser()), str(Path(path).expanduser().resolve())}:
                if len(form) > 1:
                    pairs[form.rstrip("/")] = shown
        self._known = sorted(pairs.items(), key=lambda kv: -len(kv[0]))  # longest (most specific) first
        self._top: dict[str, bool] = {}

    def add(self, path: str | os.PathLike[str], shown: str) -> None:
        for form in {str(path), str(Path(path).expanduser().resolve())}:
            if len(form) > 1:
                self._known.append((form.rstrip("/"), shown))
        self._known.sort(key=lambda kv: -len(kv[0]))

    def _is_server_path(self, path: str) -> bool:
        if re.match(r"[A-Za-z]:\\", path):
            return True
        parts = [p for p in path.split("/") if p]
        if not parts:
            return False
        if path.startswith((tempfile.gettempdir(), str(Path.home()))):
            return True
        if len(parts) < 2:
            return False
        top = parts[0]
        if top not in self._top:
            self._top[top] = os.path.isdir("/" + top)
        return self._top[top]

    def __call__(self, message: object) -> str:
        text = str(message).strip().splitlines()[0] if str(message).strip() else ""
        for path, shown in self._known:
            text = text.replace(path, shown)

        def shorten(m: re.Match[str]) -> str:
            path = m.group(1)
            if path.startswith(("/proc/", "/dev/fd/")):
                return "the upload"
            if not self._is_server_path(path):
                return path
            tail = re.split(r"[\\/]", path.rstrip("/\\"))[-1]
            return tail or "<path>"

        text = _ABS_PATH.sub(shorten, text)
        return text if len(text) <= _MAX_LEN else text[: _MAX_LEN - 1] + "…"
