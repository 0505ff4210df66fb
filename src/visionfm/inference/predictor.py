"""``visionfm predict``: a model folder applied to image / DICOM files, with files written per image.

Outputs in the output folder:

* ``predictions.csv`` — one row per image (per image and horizon for forecasting), flat columns;
* ``predictions.json`` — the same records with nested values, plus the model's task and names;
* ``attention/<name>.png`` — the image and, beside it, the encoder's CLS attention (``attention_method``
  ``"last"``: the last block's, mean over heads; ``"rollout"``: attention rollout over all blocks)
  up-sampled smoothly, confined to a fundus photograph's field of view, in ``viridis`` with a colour
  bar (unless disabled; :mod:`visionfm.reports.attention`);
* the task's own files (:meth:`visionfm.engine.task.Task.save_outputs`) — segmentation:
  ``masks/<name>.png`` (palette PNG of class ids at the image's original size) and
  ``overlays/<name>.png`` (translucent fills, legend "prediction: <class>"); landmarks:
  ``overlays/<name>.png`` (crosses labelled with the landmark names).

The records' fields come from the task (:meth:`visionfm.engine.task.Task.record`); nothing here
branches on the task's name.

``<name>`` is the file's path relative to the input folder, sub-folders and extension kept
(``sub/a.png`` → ``attention/sub/a.png.png``), so ``x.png`` and ``x.jpg``, or ``sub/a.png`` and
``sub__a.png``, never share an output; names that differ only in case get ``~2``, ``~3`` ... (for
case-insensitive file systems). Each row of the table names its files.

Unreadable inputs (corrupt, truncated, not an image): with ``on_error="skip"`` (the default for a
folder) they are listed in the table with ``status`` ``skipped`` and the reason in ``error``, and the
others are predicted; with ``"fail"`` (the default for a single file) the run stops at the first one
with one line naming it. Either way ``predictions.csv`` / ``predictions.json`` are written (atomically)
for what was done; when no input could be read the command fails after writing them.
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
from visionfm.errors import ConfigError, DataFormatError
from visionfm.reports.attention import save_attention_figure

__all__ = ["Predictor", "run_predict", "output_keys"]

log = logging.getLogger("visionfm.predict")


def output_keys(names: Sequence[str]) -> list[str]:
    """One output stem per input name (a path relative to the input folder): the name itself, sub-folders
    and extension kept, so distinct inputs never share a file; a name equal to an earlier one up to case
    gets ``~2``, ``~3`` ... (file systems that ignore case)."""
    seen: set[str] = set()
    keys = []
    for name in names:
        base = Path(name).as_posix().lstrip("/") or "image"
        key, n = base, 1
        while key.casefold() in seen:
            n += 1
            key = f"{base}~{n}"
        seen.add(key.casefold())
        keys.append(key)
    return keys


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
    def run_batch(self, images: Sequence[Image.Image], days: float | None = None, attention: bool = True,
                  attention_method: str = "last") -> tuple[dict[str, Any], np.ndarray | None]:
        """``(postprocessed predictions, attention maps [B, gh, gw] or None)`` for a list of PIL images
        (``attention_method``: see :meth:`visionfm.packaging.VisionFMModel.attention`)."""
        x, sizes = self.model.preprocess(images)
        x = x.to(self.device)
        t0 = time.perf_counter()
        d = None if days is None else torch.full((len(images),), float(days), device=self.device)
        outputs = self.model(x, d)
        pred = self.model.postprocess(outputs, sizes)
        self.timings.append((time.perf_counter() - t0) / max(len(images), 1))
        att = self.model.attention(x, method=attention_method).cpu().numpy() if attention else None
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


_FIRST_COLUMNS = ("image", "status")


def _write_csv(records: Sequence[dict[str, Any]], path: Path) -> None:
    from visionfm.io import save_text_atomic

    rows = [_flatten(r) for r in records]
    cols: list[str] = list(_FIRST_COLUMNS)
    for row in rows:
        cols += [c for c in row if c not in cols and c != "error"]
    if any("error" in row for row in rows):
        cols.append("error")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow(row)
    save_text_atomic(buf.getvalue(), path)


def _reason(exc: DataFormatError) -> str:
    """The message without the leading ``path: `` (the table's ``image`` column names the file)."""
    text = str(exc)
    prefix = f"{exc.path}: " if exc.path is not None else ""
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


def _output_folder(output_dir: str | os.PathLike[str]) -> Path:
    out = Path(output_dir)
    existing = next((a for a in (out, *out.parents) if a.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"--output {out}: {existing} is a file; expected a folder (it is created when missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--output {out}: cannot create the folder ({exc.strerror or exc})") from None
    return out


def run_predict(model: Any, inputs: str | os.PathLike[str], output_dir: str | os.PathLike[str],
                days: Sequence[float] | None = None, batch_size: int = 8, device: str = "cpu",
                attention: bool = True, overlays: bool = True, on_error: str | None = None,
                attention_method: str = "last") -> dict[str, Any]:
    """Predict every input file and write the outputs listed in the module docstring; returns a summary.

    ``attention_method``: ``"last"`` (the last block's CLS attention, mean over heads) or ``"rollout"``
    (attention rollout over all blocks), for the ``attention/<name>.png`` maps.

    ``on_error``: ``"skip"`` or ``"fail"`` for unreadable inputs; ``None`` is ``"skip"`` for a folder and
    ``"fail"`` for a single file."""
    from visionfm.data.images import check_on_error
    from visionfm.inference.io import list_inputs, read_image
    from visionfm.io import save_json_atomic

    if on_error is not None:
        check_on_error(on_error)
    from visionfm.packaging.model_folder import ATTENTION_METHODS

    if attention_method not in ATTENTION_METHODS:
        raise ConfigError(f"--attention_method {attention_method!r}: expected one of {', '.join(ATTENTION_METHODS)}")
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
    policy = on_error or ("skip" if Path(inputs).is_dir() else "fail")
    out = _output_folder(output_dir)
    keys = output_keys([n for _, n in files])
    rows: list[dict[str, Any]] = []  # every input in order: its records, or its skipped / failed row
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    failed: dict[str, Any] | None = None
    t0 = time.perf_counter()
    try:
        for start in range(0, len(files), pred.batch_size):
            chunk = list(zip(files[start:start + pred.batch_size], keys[start:start + pred.batch_size]))
            loaded: list[tuple[str, str, Image.Image]] = []
            order: list[tuple[str, dict[str, Any] | None]] = []
            for (f, name), key in chunk:
                try:
                    loaded.append((name, key, read_image(f)))
                    order.append((name, None))
                except DataFormatError as exc:
                    if policy == "fail":
                        failed = {"image": name, "status": "failed", "error": _reason(exc)}
                        raise
                    row = {"image": name, "status": "skipped", "error": _reason(exc)}
                    log.warning("skipping %s (on_error=skip): %s", f, _reason(exc))
                    skipped.append(row)
                    order.append((name, row))
            by_name: dict[str, list[dict[str, Any]]] = {}
            if loaded:
                names, images = [n for n, _, _ in loaded], [im for _, _, im in loaded]
                for h_i, horizon in enumerate(horizons):
                    want_att = attention and h_i == 0
                    p, att = pred.run_batch(images, horizon, attention=want_att, attention_method=attention_method)
                    recs = pred.records(names, images, p, horizon)
                    for i, (r, (name, key, image)) in enumerate(zip(recs, loaded)):
                        r["status"] = "ok"
                        if att is not None:
                            dst = out / "attention" / f"{key}.png"
                            save_attention_figure(att[i], image, dst, method=attention_method, title=name)
                            r["attention_map"] = dst.relative_to(out).as_posix()
                        hkey = key if horizon is None else f"{key}_days{horizon:g}"
                        r.update(spec.save_outputs(pred.config, p, i, image, out, hkey, name, overlays))
                        by_name.setdefault(name, []).append(r)
            for name, row in order:
                if row is not None:
                    rows.append(row)
                else:
                    rows.extend(by_name[name])
                    records.extend(by_name[name])
    finally:
        total_s = time.perf_counter() - t0
        table = rows + ([failed] if failed else [])
        _write_csv(table, out / "predictions.csv")
        per_image = float(np.mean(pred.timings)) if pred.timings else None
        summary = {
            "model": str(getattr(pred.model, "source", "")),
            "task": task,
            "task_kind": pred.config.get("task_kind"),
            "output_names": pred.model.output_names,
            "n_images": len(files),
            "n_records": len(records),
            "n_skipped": len(skipped),
            "on_error": policy,
            "device": str(pred.device),
            "model_load_seconds": round(load_s, 4),
            "seconds_per_image_model": None if per_image is None else round(per_image, 5),
            "seconds_total": round(total_s, 4),
        }
        extra = {"failed": failed} if failed else {}
        save_json_atomic({**summary, **extra, "predictions": records, "skipped": skipped}, out / "predictions.json")
    if skipped and not records:
        raise DataFormatError(f"none of the {len(files)} input files could be read (first: {skipped[0]['image']}: "
                              f"{skipped[0]['error']}); predictions.csv lists them", inputs)
    if skipped:
        log.warning("%d of %d input files skipped as unreadable; predictions.csv lists them with the reason",
                    len(skipped), len(files))
    log.info("%d images → %s (%.3f s/image in the model)", len(files) - len(skipped), out, per_image or 0.0)
    return summary
