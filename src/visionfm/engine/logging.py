"""Run logging: console (rank 0), ``log.txt`` JSON lines, TensorBoard scalars, progress bars."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

__all__ = ["setup_logging", "RunLogger", "progress", "json_safe"]


class _CurrentStdout(logging.StreamHandler):
    """A console handler that writes to ``sys.stdout`` as it is when each record is emitted, not as it was
    when the handler was made: notebooks and test runners replace (and close) ``sys.stdout``, and a
    handler holding an old, closed stream prints '--- Logging error ---' tracebacks instead."""

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it; the property always wins
        pass


def setup_logging(is_main: bool, level: int = logging.INFO) -> None:
    """Console logging for rank 0; other ranks only show warnings and errors."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_visionfm", False):
            root.removeHandler(h)
    handler = _CurrentStdout()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler._visionfm = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level if is_main else logging.WARNING)


class RunLogger:
    """Writes one JSON line per call to ``log.txt`` and the same scalars to TensorBoard (rank 0 only)."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True, tb_subdir: str = "tf_logs"):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(log_dir=str(self.run_dir / tb_subdir))
                except ImportError:  # pragma: no cover - tensorboard is a dependency
                    logging.getLogger(__name__).warning("tensorboard not installed; scalars only go to log.txt")

    def log(self, stats: Mapping[str, Any], step: int | None = None, prefix_for_tb: str = "") -> None:
        if not self.enabled:
            return
        clean = json_safe(stats)
        with open(self.run_dir / "log.txt", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(clean, allow_nan=False) + "\n")
        if self._tb is not None and step is not None:
            for k, v in clean.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self._tb.add_scalar(prefix_for_tb + k, v, step)
            self._tb.flush()

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.enabled and self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def rewind(self, entries: Sequence[Mapping[str, Any]], key: str = "epoch",
               write: Callable[..., None] | None = None) -> None:
        """On resume: make ``log.txt`` hold its opening lines (those before the first epoch line, each
        once) and then exactly one line per entry of ``entries`` (the epochs the resumed checkpoint has
        finished, in order). Lines of later epochs (logged after that checkpoint, before a kill), repeated
        lines and the opening lines a resumed start logs again are dropped; an entry whose line is missing
        (a kill between the checkpoint and its line) is logged again through ``write`` (default
        :meth:`log`). Kept lines stay byte for byte."""
        if not self.enabled:
            return
        from visionfm.io.atomic import save_text_atomic

        path = self.run_dir / "log.txt"
        old = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        opening: list[str] = []
        by_key: dict[Any, str] = {}
        for raw in old:
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict) and key in obj:
                by_key.setdefault(obj[key], raw)
            elif not by_key and raw not in opening:
                opening.append(raw)
        kept = list(opening)
        for entry in entries:
            line = by_key.get(entry.get(key))
            if line is None:
                break
            kept.append(line)
        if kept != old:
            if len(old) > len(kept):
                logging.getLogger(__name__).warning(
                    "%s: dropped %d line(s) written after the checkpoint being resumed", path, len(old) - len(kept))
            save_text_atomic("".join(line + "\n" for line in kept), path)
        for entry in entries[len(kept) - len(opening):]:
            (write or self.log)(dict(entry), step=entry.get(key))


def json_safe(stats: Mapping[str, Any]) -> dict[str, Any]:
    """``stats`` as strict JSON values: tensors and NumPy scalars become numbers, and NaN/inf (at any
    depth) become ``null`` with their dotted keys listed under ``"nonfinite"``, so every ``log.txt``
    line parses as JSON and a diverged value is still visible as such."""
    bad: list[str] = []

    def clean(v: Any, key: str) -> Any:
        v = _plain(v)
        if isinstance(v, float) and not math.isfinite(v):
            bad.append(key)
            return None
        if isinstance(v, Mapping):
            return {str(k): clean(x, f"{key}.{k}") for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x, f"{key}[{i}]") for i, x in enumerate(v)]
        return v

    out = {str(k): clean(v, str(k)) for k, v in stats.items()}
    if bad:
        out["nonfinite"] = sorted(set(bad) | set(out.get("nonfinite") or []))
    return out


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):
        try:
            return v.item()
        except (ValueError, RuntimeError):
            return str(v)
    return v


def progress(iterable: Iterable, total: int | None, desc: str, enabled: bool) -> Iterable:
    """tqdm progress bar on rank 0 (ETA, rate; callers may ``set_postfix``); the plain iterable elsewhere."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, mininterval=1.0, leave=True)
