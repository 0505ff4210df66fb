"""Units written into output names: ``"cup-to-disc ratio [ratio]"`` is the output ``cup-to-disc ratio`` in ``ratio``."""

from __future__ import annotations

import re

__all__ = ["split_unit"]

_UNIT_RE = re.compile(r"^(.*?)\s*[\[(]([^\[\]()]+)[\])]\s*$")


def split_unit(name: str) -> tuple[str, str | None]:
    """``"cup-to-disc ratio [ratio]"`` → ``("cup-to-disc ratio", "ratio")``; no unit → ``(name, None)``."""
    m = _UNIT_RE.match(str(name))
    if m and m.group(1):
        return m.group(1), m.group(2).strip()
    return str(name), None
