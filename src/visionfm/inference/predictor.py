"""``visionfm predict``: a model folder applied to image / DICOM files, with files written per image.

Outputs in the output folder:

* ``predictions.csv`` — one row per image (per image and horizon for forecasting), flat columns;
* ``predictions.json`` — the same records with nested values, plus the model's task and names;
* ``attention/<name>.png`` — the encoder's last-block CLS attention (mean over heads) as a heat map
  over the image (unless disabled);
* the task's own files (:meth:`visionfm.engine.task.Task.save_outputs`) — segmentation:
  ``masks/<name>.png`` (palette PNG of class ids at the image's original size) and
  ``overlays/<name>.png`` (contours); landmarks: ``overlays/<name>.png`` (crosses).

The records' fields come from the task (:meth:`visionfm.engine.task.Task.record`); nothing here
branches on the task's name.

``<name>`` is the file's path relative to the input folder with ``/`` replaced by ``__`` and the
extension dropped, so files with the same name in different sub-folders do not collide.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from visionfm.engine.task import task_names
from visionfm.errors import ConfigError
from visionfm.reports.colours import attention_overlay

__all__ = ["Predictor", "run_predict", "safe_name"]

log = logging.getLogger("visionfm.predict")


def safe_name(rel: str) -> str:
    p = Path(rel)
    stem = p.with_suffix("").as_posix() if p.suffix else p.as_posix()
    return stem.replace("/", "__").replace("\\", "__") or "image"


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but CUDA is not available")
    return torch.device(device)


class Predictor:
    """A loaded model folder with batching and per-image records.

    Args:
        model: a :class:`~visionfm.packaging.VisionFMModel` (or a folder / hub id to load).
        device: ``cpu``, ``cuda`` or ``auto``.
        batch_size: images per forward pass.
    """

    def __init__(self, model: Any, device: str | torch.device = "cpu", batch_size: int = 8) -> None:
        from visionfm.packaging import VisionFMModel, from_pretrained

        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        self.device = _resolve_device(device)
        if not isinstance(model, VisionFMModel):
            model = from_pretrained(model)
        self.model = model.to(self.device).eval()
        self.batch_size = int(batch_size)
        self.timings: list[float] = []

    @property
    def config(self) -> dict[str, Any]:
        return self.model.config

    @torch.no_grad()
    def run_batch(self, images: Sequence[Image.Image], days: float | None = None, attention: bool = True
                  ) -> tuple[dict[str, Any], np.ndarray | None]:
        """``(postprocessed predictions, attention maps [B, gh, gw] or None)`` for a list of PIL images."""
        x, sizes = self.model.preprocess(images)
        x = x.to(self.device)
        t0 = time.perf_counter()
        d = None if days is None else torch.full((len(images),), float(days), device=self.device)
        outputs = self.model(x, d)
        pred = self.model.postprocess(outputs, sizes)
        self.timings.append((time.perf_counter() - t0) / max(len(images), 1))
        att = self.model.attention(x).cpu().numpy() if attention else None
        return pred, att

    def records(self, names: Sequence[str], images: Sequence[Image.Image], pred: dict[str, Any],
                days: float | None = None) -> list[dict[str, Any]]:
        """One JSON-ready dict per image."""
        cfg, task, outputs = self.config, self.model.task_plugin, self.model.output_names
        out = []
        for i, (name, im) in enumerate(zip(names, images)):
            r: dict[str, Any] = {"image": name, "height": im.height, "width": im.width}
            if days is not None:
                r["days"] = float(days)
            r.update(task.record(cfg, pred, i, outputs))
            out.append(r)
        return out


def _flatten(record: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if key == "probabilities":
            flat.update({f"prob_{k}": v for k, v in value.items()})
        elif key == "labels":
            flat.update({f"pred_{k}": v for k, v in value.items()})
        elif key == "values":
            flat.update(value)
        elif key == "class_fraction":
            flat.update({f"fraction_{k}": v for k, v in value.items()})
        elif key == "points":
            for k, (x, y) in value.items():
                flat[f"{k}_x"], flat[f"{k}_y"] = x, y
        elif isinstance(value, list):
            flat[key] = ";".join(str(v) for v in value)
        else:
            flat[key] = value
    return flat


def _write_csv(records: Sequence[dict[str, Any]], path: Path) -> None:
    from visionfm.io import save_text_atomic

    rows = [_flatten(r) for r in records]
    cols: list[str] = []
    for row in rows:
        cols += [c for c in row if c not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow(row)
    save_text_atomic(buf.getvalue(), path)


def run_predict(model: Any, inputs: str | os.PathLike[str], output_dir: str | os.PathLike[str],
                days: Sequence[float] | None = None, batch_size: int = 8, device: str = "cpu",
                attention: bool = True, overlays: bool = True) -> dict[str, Any]:
    """Predict every input file and write the outputs listed in the module docstring; returns a summary."""
    from visionfm.inference.io import list_inputs, read_image
    from visionfm.io import save_json_atomic

    t_load = time.perf_counter()
    pred = model if isinstance(model, Predictor) else Predictor(model, device=device, batch_size=batch_size)
    load_s = time.perf_counter() - t_load
    task, spec = pred.model.task, pred.model.task_plugin
    if spec.needs_days:
        if not days:
            raise ConfigError(f"this is a {task} model: pass --days N (one or more horizons in days)")
        max_days = float(pred.config["max_days"])
        bad = [d for d in days if not 0 <= float(d) <= max_days]
        if bad:
            raise ConfigError(f"--days {bad} outside the model's range [0, {max_days:g}]")
        horizons: list[float | None] = [float(d) for d in days]
    else:
        if days:
            takes_days = " or ".join(task_names(needs_days=True))
            raise ConfigError(f"--days only applies to {takes_days} models; this one is a {task} model")
        horizons = [None]
    files = list_inputs(inputs)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for start in range(0, len(files), pred.batch_size):
        chunk = files[start:start + pred.batch_size]
        images = [read_image(f) for f, _ in chunk]
        names = [n for _, n in chunk]
        for h_i, horizon in enumerate(horizons):
            want_att = attention and h_i == 0
            p, att = pred.run_batch(images, horizon, attention=want_att)
            recs = pred.records(names, images, p, horizon)
            for i, r in enumerate(recs):
                key = safe_name(names[i])
                if horizon is not None:
                    key = f"{key}_days{horizon:g}"
                if att is not None:
                    dst = out / "attention" / f"{safe_name(names[i])}.png"
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    attention_overlay(att[i], images[i]).save(dst)
                    r["attention_map"] = dst.relative_to(out).as_posix()
                r.update(spec.save_outputs(pred.config, p, i, images[i], out, key, names[i], overlays))
            records.extend(recs)
    total_s = time.perf_counter() - t0
    _write_csv(records, out / "predictions.csv")
    per_image = float(np.mean(pred.timings)) if pred.timings else None
    summary = {
        "model": str(getattr(pred.model, "source", "")),
        "task": task,
        "task_kind": pred.config.get("task_kind"),
        "output_names": pred.model.output_names,
        "n_images": len(files),
        "n_records": len(records),
        "device": str(pred.device),
        "model_load_seconds": round(load_s, 4),
        "seconds_per_image_model": None if per_image is None else round(per_image, 5),
        "seconds_total": round(total_s, 4),
    }
    save_json_atomic({**summary, "predictions": records}, out / "predictions.json")
    log.info("%d images → %s (%.3f s/image in the model)", len(files), out, per_image or 0.0)
    return summary
