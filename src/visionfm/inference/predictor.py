"""``visionfm predict``: a model folder applied to image / DICOM files, with files written per image.

Outputs in the output folder:

* ``predictions.csv`` — one row per image (per image and horizon for forecasting), flat columns;
* ``predictions.json`` — the same records with nested values, plus the model's task and names;
* ``attention/<name>.png`` — the encoder's last-block CLS attention (mean over heads) as a heat map
  over the image (unless disabled);
* segmentation: ``masks/<name>.png`` (palette PNG of class ids at the image's original size) and
  ``overlays/<name>.png`` (contours); landmarks: ``overlays/<name>.png`` (crosses).

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

from visionfm.errors import ConfigError

__all__ = ["Predictor", "run_predict", "attention_heatmap", "safe_name"]

log = logging.getLogger("visionfm.predict")


def safe_name(rel: str) -> str:
    p = Path(rel)
    stem = p.with_suffix("").as_posix() if p.suffix else p.as_posix()
    return stem.replace("/", "__").replace("\\", "__") or "image"


def attention_heatmap(image: Image.Image, attention: np.ndarray, alpha: float = 0.5, max_side: int = 1024
                      ) -> Image.Image:
    """``attention`` ``[gh, gw]`` in [0, 1] up-sampled over ``image`` with the ``jet`` colour map."""
    import matplotlib

    img = image.convert("RGB")
    if max(img.size) > max_side:
        s = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.BILINEAR)
    a = Image.fromarray(np.clip(attention * 255.0, 0, 255).astype(np.uint8), mode="L")
    a = np.asarray(a.resize(img.size, Image.BILINEAR), dtype=np.float64) / 255.0
    heat = (matplotlib.colormaps["jet"](a)[..., :3] * 255.0)
    out = (1 - alpha) * np.asarray(img, dtype=np.float64) + alpha * heat
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="RGB")


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
        cfg, task = self.config, self.model.task
        out = []
        for i, (name, im) in enumerate(zip(names, images)):
            r: dict[str, Any] = {"image": name, "height": im.height, "width": im.width}
            if days is not None:
                r["days"] = float(days)
            if task in ("classification", "forecasting"):
                cls = list(cfg["class_names"])
                kind = cfg["task_kind"]
                p = np.asarray(pred["probabilities"][i], dtype=np.float64).reshape(-1)
                if kind == "binary":
                    positive = cls[-1] if len(cls) == 2 else "1"
                    r["prediction"] = pred["label_names"][i]
                    r["index"] = int(pred["labels"][i])
                    r["probabilities"] = {positive: float(p[0])}
                elif kind == "multiclass":
                    r["prediction"] = pred["label_names"][i]
                    r["index"] = int(pred["labels"][i])
                    r["probabilities"] = {n: float(v) for n, v in zip(cls, p)}
                else:
                    r["prediction"] = list(pred["label_names"][i])
                    r["labels"] = {n: int(v) for n, v in zip(cls, pred["labels"][i])}
                    r["probabilities"] = {n: float(v) for n, v in zip(cls, p)}
            elif task == "regression":
                r["values"] = {n: float(v) for n, v in zip(cfg["target_names"], pred["values"][i])}
            elif task == "segmentation":
                m = pred["masks"][i]
                names_c = self.model.output_names or [f"class {c}" for c in range(int(m.max()) + 1)]
                ncls = max(2, len(names_c))
                counts = np.bincount(m.reshape(-1).astype(np.int64), minlength=ncls)
                r["class_fraction"] = {str(names_c[c]) if c < len(names_c) else f"class {c}": float(counts[c] / m.size)
                                       for c in range(ncls)}
            else:
                lm = self.model.output_names
                r["points"] = {lm[k] if k < len(lm) else f"landmark_{k}": [float(v) for v in pt]
                               for k, pt in enumerate(pred["points"][i])}
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
    task = pred.model.task
    if task == "forecasting":
        if not days:
            raise ConfigError("this is a forecasting model: pass --days N (one or more horizons in days)")
        max_days = float(pred.config["max_days"])
        bad = [d for d in days if not 0 <= float(d) <= max_days]
        if bad:
            raise ConfigError(f"--days {bad} outside the model's range [0, {max_days:g}]")
        horizons: list[float | None] = [float(d) for d in days]
    else:
        if days:
            raise ConfigError(f"--days only applies to forecasting models; this one is a {task} model")
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
                    attention_heatmap(images[i], att[i]).save(dst)
                    r["attention_map"] = dst.relative_to(out).as_posix()
                if task == "segmentation":
                    r["mask"] = _save_mask(p["masks"][i], out / "masks" / f"{key}.png").relative_to(out).as_posix()
                if overlays and task in ("segmentation", "landmark"):
                    r["overlay"] = _save_overlay(pred, images[i], p, i, out / "overlays" / f"{key}.png", names[i]
                                                 ).relative_to(out).as_posix()
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


def _save_mask(mask: np.ndarray, path: Path) -> Path:
    from visionfm.tasks.segmentation import PALETTE

    path.parent.mkdir(parents=True, exist_ok=True)
    png = Image.fromarray(mask.astype(np.uint8), mode="P")
    png.putpalette(PALETTE + [0] * (768 - len(PALETTE)))
    png.save(path)
    return path


def _save_overlay(pred: Predictor, image: Image.Image, p: dict[str, Any], i: int, path: Path, title: str) -> Path:
    from visionfm.reports import save_overlay

    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.asarray(image.convert("RGB"))
    if pred.model.task == "segmentation":
        names = pred.model.output_names
        return save_overlay(img, path, pred_mask=p["masks"][i], class_names=names or None, title=title)
    return save_overlay(img, path, pred_points=p["points"][i], title=title)
