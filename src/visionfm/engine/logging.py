"""Run logging: console (rank 0), ``log.txt`` JSON lines, TensorBoard scalars, progress bars."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["setup_logging", "RunLogger", "progress"]


def setup_logging(is_main: bool, level: int = logging.INFO) -> None:
    """Console logging for rank 0; other ranks only show warnings and errors."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_visionfm", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout)
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
        clean = {k: _plain(v) for k, v in stats.items()}
        with open(self.run_dir / "log.txt", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(clean) + "\n")
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
