"""Glaucoma-progression forecasting on a frozen encoder (``visionfm train-forecast``; reference §2.7, §5.7).

The original script never ran (it did not parse, and had further fatal defects, §5.7). What it
meant to do, working:

* image features from the frozen encoder (last-``n`` CLS concat, mean patch token, or both),
  computed ONCE per split and cached in ``<run>/features/<split>.safetensors`` (reused on a rerun
  when the encoder, input size, modality and label file are unchanged);
* :class:`~visionfm.models.heads.forecast.ForecastHead`: features (projected to ``D`` when wider)
  plus a sinusoidal encoding of the interval in days → one logit, "progresses within the interval";
  intervals outside ``[0, max_len)`` are rejected when the label file is read;
* ``BCEWithLogits`` with a float ``pos_weight`` tensor, SGD (momentum 0.9) or AdamW, trained on the
  cached features by :func:`~visionfm.engine.trainer.fit`; the best epoch is chosen
  on ``val`` (else ``test``, logged) by AUROC — never by F1 on logits, never with best = 1.0 at start;
* test metrics over the whole set: AUROC, AUPR, F1 at ``--threshold`` on the probabilities,
  sensitivity at ``--specificity``; the same per interval bucket (``--interval_buckets``, default
  <1y, 1–3y, >3y); and an interval-only logistic-regression baseline, all in ``report/``;
* the selected model as a model folder ``<run>/model/`` (encoder + ``forecast_std`` head), which
  ``visionfm predict --days`` applies to images.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from visionfm.engine.task import register_task
from visionfm.errors import ConfigError, DataFormatError
from visionfm.tasks.classification import KIND_TEXT, Classification

if TYPE_CHECKING:
    from visionfm.config import TrainForecastConfig

__all__ = [
    "ForecastSplit",
    "parse_buckets",
    "bucket_labels",
    "forecast_metrics",
    "stratified_metrics",
    "interval_baseline",
    "predict_forecast",
    "run_train_forecast",
]

log = logging.getLogger("visionfm.forecast")

SPLIT_ROLES = {"train": "training", "val": "val", "test": "test"}


@dataclass
class ForecastSplit:
    """One split's cached features, labels, intervals and image paths (file order)."""

    name: str
    cls: torch.Tensor  # [N, levels, D]
    patch_mean: torch.Tensor  # [N, D]
    labels: torch.Tensor  # [N] float 0/1
    days: torch.Tensor  # [N] int64
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# -- metrics --------------------------------------------------------------------------------------------


def parse_buckets(text: str | Sequence[int]) -> list[int]:
    """``"365,1095"`` → ``[365, 1095]`` (strictly increasing positive day edges)."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            edges = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(f"--interval_buckets {text!r}: expected comma-separated whole days, "
                              "e.g. 365,1095") from None
    else:
        edges = [int(v) for v in text]
    if any(e <= 0 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ConfigError(f"--interval_buckets must be increasing positive day counts, got {edges}")
    return edges


def _fmt_days(d: int) -> str:
    return f"{d // 365}y" if d % 365 == 0 else f"{d}d"


def bucket_labels(days: np.ndarray, edges: Sequence[int]) -> tuple[np.ndarray, list[str]]:
    """Bucket index per sample and the bucket names (e.g. ``<1y``, ``1y-3y``, ``>=3y``)."""
    names = []
    bounds = [0, *edges, None]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if lo == 0:
            names.append(f"<{_fmt_days(hi)}")  # type: ignore[arg-type]
        elif hi is None:
            names.append(f">={_fmt_days(lo)}")
        else:
            names.append(f"{_fmt_days(lo)}-{_fmt_days(hi)}")
    idx = np.searchsorted(np.asarray(edges), np.asarray(days), side="right")
    return idx, names


def forecast_metrics(y: np.ndarray, probs: np.ndarray, threshold: float = 0.5,
                     specificity: float = 0.9) -> dict[str, Any]:
    """AUROC, AUPR, F1 at ``threshold`` and sensitivity at ``specificity``, over the whole set."""
    from visionfm.metrics import average_precision, binary_auroc, f1_at_threshold, sensitivity_at_specificity

    y = np.asarray(y).astype(np.int64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    op = sensitivity_at_specificity(y, p, specificity)
    return {
        "n": int(len(y)),
        "n_positive": int(y.sum()),
        "auroc": binary_auroc(y, p) if len(y) else None,
        "aupr": average_precision(y, p) if len(y) else None,
        "f1": f1_at_threshold(y, p, threshold) if len(y) else None,
        "threshold": float(threshold),
        f"sensitivity_at_specificity_{specificity:g}": op.sensitivity,
        "operating_threshold": op.threshold,
    }


def stratified_metrics(y: np.ndarray, probs: np.ndarray, days: np.ndarray, edges: Sequence[int],
                       threshold: float, specificity: float) -> dict[str, dict[str, Any]]:
    """:func:`forecast_metrics` per interval bucket (``None`` where a bucket has a single class)."""
    idx, names = bucket_labels(days, edges)
    out = {}
    for k, name in enumerate(names):
        m = idx == k
        out[name] = forecast_metrics(np.asarray(y)[m], np.asarray(probs)[m], threshold, specificity)
    return out


def interval_baseline(train_days: np.ndarray, train_y: np.ndarray, test_days: np.ndarray) -> np.ndarray | None:
    """Interval-only baseline: logistic regression on ``log(1 + days)``; test probabilities (or ``None``
    when the training labels have a single class)."""
    from sklearn.linear_model import LogisticRegression

    ytr = np.asarray(train_y).astype(np.int64)
    if len(np.unique(ytr)) < 2:
        return None
    f = lambda d: np.log1p(np.asarray(d, dtype=np.float64)).reshape(-1, 1)  # noqa: E731
    lr = LogisticRegression(max_iter=1000).fit(f(train_days), ytr)
    return lr.predict_proba(f(test_days))[:, 1]


# -- features ---------------------------------------------------------------------------------------------


class _DropDays(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """``(img, label, days, extras)`` → ``(img, label, extras)`` for the shared feature pass."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, label, _days, extras = self.base[i]
        return img, label, extras


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cached_split(opts: TrainForecastConfig, encoder: nn.Module, ident: dict[str, Any], env: Any, role: str,
                  cache_dir: Path) -> ForecastSplit | None:
    """Features of one split from the run's feature store (``<run>/features/<split>``), or computed once
    with the frozen encoder and stored there (the same :class:`~visionfm.data.features.FeatureStore`
    format ``visionfm extract`` writes)."""
    from visionfm.data.features import FeatureStore
    from visionfm.data.layouts import ForecastingDataset
    from visionfm.data.layouts.forecasting import forecasting_label_file
    from visionfm.engine.features import eval_transform, features_in_memory, store_matches

    split = SPLIT_ROLES[role]
    try:
        label_file = forecasting_label_file(opts.data_path, split)
    except DataFormatError:
        if role == "val":
            return None
        raise
    tf = eval_transform(opts.input_size, opts.modality)
    ds = ForecastingDataset(opts.data_path, split, transform=tf, max_days=opts.max_len)
    want = {**ident, "label_file_sha256": _file_sha(label_file), "split": split}
    folder = cache_dir / split
    paths = [str(s.path) for s in ds.samples]
    labels = torch.from_numpy(ds.labels).float()
    days = torch.from_numpy(ds.days)
    if store_matches(FeatureStore.read_meta(folder), want, len(ds)):
        st = FeatureStore.open(folder, expect=ident)
        if env.is_main:
            log.info("features %s: reusing the feature store %s", split, folder)
        return ForecastSplit(split, st.cls, st.patch_mean, labels, days, paths)
    f = features_in_memory(encoder, _DropDays(ds), env, opts.batch_size_per_gpu, opts.num_workers,
                           desc=f"features {split}" if env.is_main else None, amp=opts.amp)
    if env.is_main:
        FeatureStore.write(folder, f["cls"].contiguous(), f["labels"], f["index"], want,
                           patch_mean=f["patch_mean"].contiguous())
    return ForecastSplit(split, f["cls"], f["patch_mean"], labels, days, paths)


def head_features(s: ForecastSplit, n_last_blocks: int, avgpool: int) -> torch.Tensor:
    """0: last-n CLS concat ``[N, n·D]``; 1: mean patch token ``[N, D]``; 2: both ``[N, (n+1)·D]``."""
    from visionfm.models.pooling import pool_tokens

    return pool_tokens(s.cls, s.patch_mean, n_last_blocks, avgpool)


@torch.no_grad()
def predict_forecast(model: nn.Module, x: torch.Tensor, days: torch.Tensor, batch: int = 4096) -> np.ndarray:
    """Sigmoid probabilities ``[N]``."""
    model.eval()
    dev = next(model.parameters()).device
    outs = [model(x[i:i + batch].to(dev), days[i:i + batch].to(dev)).float().cpu() for i in range(0, len(x), batch)]
    return torch.sigmoid(torch.cat(outs)).numpy() if outs else np.zeros(0)


def build_forecast_model(embed_dim: int, in_features: int, max_len: int, dropout: float = 0.0,
                         mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> nn.Module:
    """Standardisation + :class:`~visionfm.models.heads.forecast.ForecastHead` (the ``forecast_std`` head)."""
    from visionfm.models.heads.forecast import StandardizedForecastHead

    return StandardizedForecastHead(embed_dim, max_len, in_features=in_features, dropout=dropout, mean=mean, std=std)


# -- the command ----------------------------------------------------------------------------------------


def run_train_forecast(opts: TrainForecastConfig) -> int:
    """``visionfm train-forecast``: see the module docstring and docs/forecasting-and-finetuning.md."""
    from visionfm.engine.distributed import command_session
    from visionfm.engine.features import (
        encoder_identity,
        load_frozen_encoder,
        resolve_modality,
        resolved_encoder_options,
    )
    from visionfm.engine.logging import RunLogger
    from visionfm.engine.trainer import (
        FitConfig,
        TensorBatches,
        fit,
        load_decoder_checkpoint,
        loss_step,
        selection_split,
        start_point,
    )
    from visionfm.io import save_json_atomic

    if opts.max_len < 1:
        raise ConfigError(f"--max_len must be positive, got {opts.max_len}")
    if opts.pos_weight <= 0:
        raise ConfigError(f"--pos_weight must be > 0, got {opts.pos_weight}")
    if not 0.0 < opts.specificity < 1.0:
        raise ConfigError(f"--specificity must be in (0, 1), got {opts.specificity}")
    if opts.avgpool_patchtokens not in (0, 1, 2):
        raise ConfigError("--avgpool_patchtokens must be 0, 1 or 2")
    edges = parse_buckets(opts.interval_buckets)
    with command_session(opts.device, seed=opts.seed) as env:
        run_dir = opts.run_dir()
        resume_from, init_from = start_point(run_dir, opts.load_from, opts.resume, overwrite=opts.overwrite,
                                             named=bool(opts.name), is_main=env.is_main)  # before any write
        encoder = load_frozen_encoder(opts.pretrained_weights, opts.arch, opts.checkpoint_key, opts.patch_size,
                                      opts.input_size).to(env.device)
        if opts.embed_dim is not None and int(opts.embed_dim) != int(encoder.embed_dim):
            raise ConfigError(f"--embed_dim {opts.embed_dim}, but the encoder of {opts.pretrained_weights} has width "
                              f"{int(encoder.embed_dim)} ({encoder.load_report.arch}); leave --embed_dim out")
        opts = resolved_encoder_options(opts, encoder).replace(
            modality=resolve_modality(opts.modality, opts.pretrained_weights), embed_dim=int(encoder.embed_dim))
        ident = encoder_identity(encoder, opts.modality, opts.input_size, "cls")
        ident.pop("visionfm_version", None)
        ident["autocast"] = "bf16" if opts.amp and env.device.type == "cuda" else "fp32"  # a cache of one precision
        cache_dir = run_dir / "features"
        splits = {role: _cached_split(opts, encoder, ident, env, role, cache_dir) for role in ("train", "val", "test")}
        embed_dim = int(encoder.embed_dim)
        train, val, test = splits["train"], splits["val"], splits["test"]
        assert train is not None and test is not None
        val, sel_split = selection_split(val, test, warn=env.is_main)
        x_train = head_features(train, opts.n_last_blocks, opts.avgpool_patchtokens)
        in_dim = int(x_train.shape[1])
        mean, std = x_train.mean(0), x_train.std(0) if len(x_train) > 1 else torch.ones(in_dim)
        model = build_forecast_model(embed_dim, in_dim, opts.max_len, opts.dropout,
                                     mean if opts.standardize else None, std if opts.standardize else None)
        meta = {"task": "forecasting", "embed_dim": embed_dim, "in_dim": in_dim, "max_len": opts.max_len,
                "n_last_blocks": opts.n_last_blocks, "avgpool_patchtokens": opts.avgpool_patchtokens,
                "standardize": bool(opts.standardize), "dropout": opts.dropout, "modality": opts.modality,
                "pos_weight": opts.pos_weight, "threshold": opts.threshold, "selection_split": sel_split,
                "class_names": ["no progression", "progression"]}
        run_logger = RunLogger(run_dir, enabled=env.is_main)
        if sel_split == "test":
            run_logger.log({"note": "no val split: model selection on the test split"})
        packed = torch.cat([x_train, train.days.float().unsqueeze(1)], dim=1)
        x_val = head_features(val, opts.n_last_blocks, opts.avgpool_patchtokens)
        y_val = val.labels.numpy()

        def evaluate(m: nn.Module) -> dict[str, Any]:
            p = predict_forecast(m, x_val, val.days)
            return forecast_metrics(y_val, p, opts.threshold, opts.specificity)

        bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([float(opts.pos_weight)], device=env.device))

        def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return bce(logits.reshape(-1), y.reshape(-1))

        cfg = FitConfig(epochs=opts.epochs, lr=opts.lr, batch_size=opts.batch_size_per_gpu, optimizer=opts.optimizer,
                        weight_decay=opts.weight_decay, scheduler=opts.scheduler, val_freq=opts.val_freq,
                        seed=opts.seed, amp=False)
        batches = TensorBatches(packed, train.labels.clone(), cfg.batch_size, cfg.seed, env.rank, env.world_size,
                                env.device)
        identity = {k: meta[k] for k in ("task", "embed_dim", "in_dim", "max_len", "n_last_blocks",
                                         "avgpool_patchtokens", "standardize", "dropout", "modality", "pos_weight")}
        identity["data"], identity["pretrained_weights"] = str(opts.data_path), str(opts.pretrained_weights)
        result = fit(model, batches, loss_step(loss_fn), evaluate, selection_key=opts.selection, higher_is_better=True,
                     run_dir=run_dir, cfg=cfg, env=env, run_logger=run_logger, meta=meta, identity=identity,
                     resume_from=resume_from, init_from=init_from)
        best = run_dir / "checkpoint_best"
        sd, info, _ = load_decoder_checkpoint(best)
        model.load_state_dict(sd)
        model.to(env.device)
        x_test = head_features(test, opts.n_last_blocks, opts.avgpool_patchtokens)
        probs = predict_forecast(model, x_test, test.days)
        if env.is_main:
            metrics = _report(opts, run_dir, test, train, probs, edges, result.best_epoch, sel_split)
            info["test_metrics"] = metrics["forecast"]
            save_json_atomic(info, best.with_suffix(".json"))
            folder = _package(opts, run_dir, encoder, model, embed_dim, in_dim, metrics, sel_split)
            run_logger.log({"final_test": metrics["forecast"],
                            "baseline_interval_only": metrics["baseline_interval_only"],
                            "best_epoch": result.best_epoch, "selection_split": sel_split})
            run_logger.close()
            from visionfm.reports.summary import format_summary

            base = metrics["baseline_interval_only"].get("auroc")
            print(format_summary("train-forecast", metrics, selection={
                "metric": opts.selection, "value": result.best_value, "epoch": result.best_epoch,
                "epochs": opts.epochs, "split": sel_split, "higher_is_better": True},
                notes=[f"interval-only baseline AUROC {base:.3f}" if base is not None else
                       "interval-only baseline undefined (one class in training)"],
                paths={"report": run_dir / "report" / "report.html", "model": folder, "log": run_dir / "log.txt"}))
        return 0


def _package(opts: TrainForecastConfig, run_dir: Path, encoder: nn.Module, model: nn.Module, embed_dim: int,
             in_dim: int,
             metrics: dict[str, Any], sel_split: str) -> Path:
    """``<run>/model/``: the frozen encoder + the selected ``forecast_std`` head, usable by ``visionfm predict
    --days``. Its features are computed exactly as the cached ones (bilinear resize, final norm)."""
    from visionfm.packaging import model_folder_from_training

    fm = metrics["forecast"]
    summary = {k: fm.get(k) for k in ("auroc", "aupr", "f1")}
    summary["baseline_interval_only_auroc"] = metrics["baseline_interval_only"].get("auroc")
    data = {"data_path": str(opts.data_path), "selection_split": sel_split,
            "evaluated_on": f"the test split, with the epoch selected on {sel_split}", "run": str(run_dir)}
    return model_folder_from_training(
        run_dir / "model", encoder=encoder, head=model, task="forecasting", task_kind="binary",
        modality=opts.modality, input_size=int(opts.input_size), interpolation="bilinear",
        features={"type": "pooled", "n_last_blocks": int(opts.n_last_blocks), "avgpool": int(opts.avgpool_patchtokens)},
        head_type="forecast_std",
        head_args={"embed_dim": int(embed_dim), "max_len": int(opts.max_len), "in_features": int(in_dim),
                   "dropout": float(opts.dropout)},
        class_names=["no progression", "progression"], thresholds=[float(opts.threshold)],
        max_days=float(opts.max_len - 1), metrics=summary, data=data, name=f"{opts.run_name()} ({opts.modality})",
        weights_source=str(opts.pretrained_weights))


def _report(opts: TrainForecastConfig, run_dir: Path, test: ForecastSplit, train: ForecastSplit, probs: np.ndarray,
            edges: Sequence[int], epoch: int, sel_split: str) -> dict[str, Any]:
    from visionfm.io import save_json_atomic
    from visionfm.reports import evaluate_classification_run, write_report

    y = test.labels.numpy().astype(np.int64)
    days = test.days.numpy()
    report_dir = run_dir / "report"
    meta = {"name": opts.run_name(), "modality": opts.modality, "checkpoint_epoch": epoch,
            "evaluated": f"test (best epoch selected on {sel_split})", "n_test": len(test),
            "max_len": opts.max_len, "pos_weight": opts.pos_weight}
    title = f"{opts.run_name()}: progression forecasting ({opts.modality})"
    metrics = evaluate_classification_run(report_dir, y, probs, "binary", ["no progression", "progression"],
                                          paths=test.paths, threshold=opts.threshold, n_boot=opts.report_n_boot,
                                          seed=opts.seed, title=title, meta=meta)
    fm = forecast_metrics(y, probs, opts.threshold, opts.specificity)
    strat = stratified_metrics(y, probs, days, edges, opts.threshold, opts.specificity)
    base_p = interval_baseline(train.days.numpy(), train.labels.numpy(), days)
    base = (forecast_metrics(y, base_p, opts.threshold, opts.specificity) if base_p is not None
            else {"auroc": None, "note": "training labels have a single class"})
    metrics["forecast"] = fm
    metrics["by_interval"] = strat
    metrics["baseline_interval_only"] = base
    images = [(cap, report_dir / f) for cap, f in (("ROC curve", "roc.png"), ("Precision–recall curve", "pr.png"),
                                                   ("Confusion matrix", "confusion_matrix.png"),
                                                   ("Calibration", "calibration.png")) if (report_dir / f).is_file()]
    spec_key = f"sensitivity_at_specificity_{opts.specificity:g}"
    rows = [{"interval": name, "n": m["n"], "positives": m["n_positive"], "AUROC": m["auroc"], "AUPR": m["aupr"],
             "F1": m["f1"], spec_key: m[spec_key]} for name, m in strat.items()]
    rows.append({"interval": "all", "n": fm["n"], "positives": fm["n_positive"], "AUROC": fm["auroc"],
                 "AUPR": fm["aupr"], "F1": fm["f1"], spec_key: fm[spec_key]})
    brow = {"model": "interval-only logistic regression", "AUROC": base.get("auroc"), "AUPR": base.get("aupr")}
    write_report(report_dir, title, metrics, images=images, meta=meta,
                 tables={"Results by interval (time-stratified)": rows,
                         "Baseline": [brow, {"model": "forecaster", "AUROC": fm["auroc"], "AUPR": fm["aupr"]}]})
    # the per-image list the original would have produced, with the interval
    per = {p: {"gt": int(t), "pred": float(s), "days": int(d)} for p, t, s, d in zip(test.paths, y, probs, days)}
    save_json_atomic(per, run_dir / f"{opts.run_name()}_{opts.modality}_results.json")
    return metrics


# -- the packaged-model plug-in (the task registry of visionfm.engine.task) ------------------------------------
# Kept at the end of the module, apart from the training code above.


@register_task
class Forecasting(Classification):
    """A classifier of the state ``days`` days after the image: read like :class:`Classification` (the
    event at the horizon), with the horizon as a second head input (``head(features, days)``)."""

    name = "forecasting"
    needs_days = True
    selection_key = "auroc"  # train-forecast's default --selection

    def validate_config(self, cfg: Mapping[str, Any], bad: Callable[[str], Exception]) -> None:
        super().validate_config(cfg, bad)
        md = cfg.get("max_days")
        if not (isinstance(md, (int, float)) and md > 0):
            raise bad(f"a forecasting model needs a positive max_days, got {md!r}")

    def forward(self, head: nn.Module, x: Any, images: torch.Tensor, cfg: Mapping[str, Any],
                days: torch.Tensor | None = None) -> torch.Tensor:
        if days is None:
            raise ConfigError("a forecasting model needs days (the horizon) for every image")
        days = torch.as_tensor(days, device=images.device).reshape(-1)
        if days.numel() == 1:
            days = days.expand(images.shape[0])
        max_days = float(cfg["max_days"])
        if bool(((days < 0) | (days > max_days)).any()):
            raise ConfigError(f"days must be within [0, {max_days:g}] for this model, got {days.tolist()}")
        return head(x, days)

    def card_task_line(self, cfg: Mapping[str, Any]) -> str:
        kind = cfg.get("task_kind")
        return f"forecasting ({KIND_TEXT.get(str(kind), kind)} of the state after `days` days, " \
               f"0 to {cfg.get('max_days')})"
