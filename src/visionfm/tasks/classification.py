"""Classification on a frozen encoder (``visionfm train-cls``; reference §5.2, metrics §6.2–6.3).

Features are computed once (from images, in memory) or read from an ``extract`` feature store;
a :class:`~visionfm.models.heads.ClsHead` (or linear probe) is trained on them by
:func:`~visionfm.engine.trainer.fit`. The best epoch is chosen on ``val`` when the
data has one, else on ``test`` (logged and reported as such). At the end the best checkpoint is
evaluated on ``test``: ``report/`` (metrics.json, predictions.csv, figures, report.html) and the
original's ``<name>_<modality>_results.json``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from visionfm.engine.task import Display, Task, register_task
from visionfm.errors import ConfigError, DataFormatError

if TYPE_CHECKING:
    from visionfm.config import TrainClsConfig

__all__ = [
    "TASK_KINDS",
    "SplitFeatures",
    "resolve_task",
    "make_targets",
    "make_loss",
    "predict_scores",
    "selection_metrics",
    "per_image_results",
    "load_store_split",
    "run_train_cls",
]

log = logging.getLogger("visionfm.cls")

TASK_KINDS = ("auto", "binary", "multiclass", "multilabel")


@dataclass
class SplitFeatures:
    """One split's stored tokens, labels and image identifiers, in a fixed order."""

    name: str
    cls: torch.Tensor  # [N, levels, D]
    patch_mean: torch.Tensor | None  # [N, D]
    labels: torch.Tensor  # [N, L] float
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.cls.shape[0])


# -- task, targets, loss, scores ----------------------------------------------------------------------


def resolve_task(labels: np.ndarray | torch.Tensor, num_labels: int, task: str = "auto") -> tuple[str, int]:
    """``(task, number of head outputs)`` from the label matrix ``[N, L]`` and ``--num_labels``.

    One integer per row: ``num_labels == 1`` → binary (one logit, ids 0/1), else multiclass with
    ``num_labels`` classes. ``L > 1`` 0/1 rows → multilabel with ``L`` outputs.
    """
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] == 0:
        raise DataFormatError(f"labels must be a non-empty [N, L] matrix, got shape {y.shape}")
    if task not in TASK_KINDS:
        raise ConfigError(f"--task {task!r}; expected one of {', '.join(TASK_KINDS)}")
    L = y.shape[1]
    if task == "auto":
        if L > 1:
            task = "multilabel"
        else:
            task = "binary" if num_labels == 1 else "multiclass"
    if task == "multilabel":
        if L == 1:
            raise ConfigError("--task multilabel needs multi-hot label vectors (several comma-separated 0/1 values)")
        if not np.all((y == 0) | (y == 1)):
            raise DataFormatError("multilabel targets must be 0/1 vectors; found other values (regression data?)")
        if num_labels not in (L,) and num_labels != 5:  # 5 is the flag default: accept it silently
            raise ConfigError(f"--num_labels {num_labels} but the label files hold {L} labels per image")
        return "multilabel", L
    if L != 1:
        raise ConfigError(f"--task {task} needs one integer label per image; the files hold {L} values per image "
                          "(use --task multilabel for multi-hot vectors)")
    if not np.all(y == np.round(y)) or y.min() < 0:
        raise DataFormatError("class labels must be non-negative integers")
    if task == "binary":
        if y.max() > 1:
            raise DataFormatError(f"binary task: labels must be 0 or 1, found {int(y.max())}")
        return "binary", 1
    n_cls = int(num_labels)
    if n_cls < 2:
        raise ConfigError("a multiclass task needs --num_labels >= 2 (use --num_labels 1 for binary)")
    if y.max() >= n_cls:
        raise DataFormatError(f"class id {int(y.max())} is out of range for --num_labels {n_cls}")
    return "multiclass", n_cls


def make_targets(labels: torch.Tensor, task: str) -> torch.Tensor:
    """Training targets: long ``[N]`` (multiclass), float ``[N]`` (binary), float ``[N, L]`` (multilabel)."""
    if task == "multiclass":
        return labels[:, 0].round().long()
    if task == "binary":
        return labels[:, 0].float()
    return labels.float()


def make_loss(task: str):
    """Cross-entropy (multiclass) or BCE-with-logits (binary on the single logit, multilabel)."""
    if task == "multiclass":
        return nn.CrossEntropyLoss()
    bce = nn.BCEWithLogitsLoss()
    if task == "binary":
        return lambda logits, y: bce(logits.reshape(-1), y)
    return bce


@torch.no_grad()
def predict_scores(model: nn.Module, inputs: torch.Tensor, task: str, batch: int = 4096) -> np.ndarray:
    """Probabilities: softmax ``[N, C]`` (multiclass), sigmoid ``[N]`` (binary) or ``[N, L]`` (multilabel)."""
    model.eval()
    dev = next(model.parameters()).device
    outs = [model(inputs[i:i + batch].to(dev)).float().cpu() for i in range(0, len(inputs), batch)]
    logits = torch.cat(outs) if outs else torch.zeros(0, 1)
    if task == "multiclass":
        return torch.softmax(logits, dim=1).numpy()
    probs = torch.sigmoid(logits)
    return probs.reshape(-1).numpy() if task == "binary" else probs.numpy()


def truth_for_metrics(labels: torch.Tensor, task: str) -> np.ndarray:
    y = labels.numpy()
    return y[:, 0].round().astype(np.int64) if task in ("binary", "multiclass") else y.astype(np.float64)


def selection_metric_name(task: str, ordinal: bool = False) -> str:
    """The metric that picks the best epoch: macro F1, macro AUROC (multilabel), quadratic kappa (ordinal)."""
    if task == "multilabel":
        return "auroc_macro"
    return "quadratic_weighted_kappa" if ordinal else "f1_macro"


def selection_metrics(y_true: np.ndarray, scores: np.ndarray, task: str,
                      class_names: Sequence[str] | None = None, ordinal: bool = False) -> dict[str, Any]:
    """The numbers logged every validation: ``selection`` (the value of :func:`selection_metric_name`),
    ``accuracy``, ``auroc``, ``f1_macro`` (+ ``quadratic_weighted_kappa`` when ordinal). Undefined values are
    ``None``."""
    from visionfm.metrics import classification_metrics

    m = classification_metrics(y_true, scores, task, class_names=class_names, ordinal=ordinal or None)
    if task == "multilabel":
        out = {"auroc": m.get("auroc_macro"), "f1_macro": m.get("f1_macro"), "accuracy": m.get("subset_accuracy")}
        out["selection"] = out["auroc"] if out["auroc"] is not None else None
    else:
        out = {"auroc": m.get("auroc") if task == "binary" else m.get("auroc_macro"),
               "f1_macro": m.get("f1_macro"), "accuracy": m.get("accuracy")}
        if ordinal:
            out["quadratic_weighted_kappa"] = m.get("quadratic_weighted_kappa")
        out["selection"] = m.get(selection_metric_name(task, ordinal))
    return out


def per_image_results(paths: Sequence[str], y_true: np.ndarray, scores: np.ndarray, task: str,
                      n_out: int) -> dict[str, Any]:
    """The original's test JSON: ``{img_path: {"gt": [...], "pred": [...]}}`` (one-hot gt + softmax for
    multiclass, ``[label]`` + ``[sigmoid]`` for binary, multi-hot + sigmoids for multilabel)."""
    out: dict[str, Any] = {}
    for i, p in enumerate(paths):
        if task == "multiclass":
            gt = [0.0] * n_out
            gt[int(y_true[i])] = 1.0
            pred = [float(v) for v in scores[i]]
        elif task == "binary":
            gt, pred = [float(y_true[i])], [float(scores[i])]
        else:
            gt, pred = [float(v) for v in y_true[i]], [float(v) for v in scores[i]]
        out[str(p)] = {"gt": gt, "pred": pred}
    return out


# -- features -----------------------------------------------------------------------------------------

VFM_STORE_SPLITS = {"train": "training", "val": "val", "test": "test"}


def load_store_split(root: str | Path, split: str, expect: dict[str, Any] | None = None) -> SplitFeatures | None:
    """Concatenate every store under ``<root>/<dataset>/<split>/pass_*`` (all passes for ``training``,
    ``pass_0`` otherwise); ``None`` when no dataset has that split. All stores must share one encoder."""
    from visionfm.data.features import FeatureStore, identity_mismatches

    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--features {root}: folder not found")
    parts = []
    first_meta = expect
    for ds in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        sdir = ds / split
        if not sdir.is_dir():
            continue
        passes = sorted((p for p in sdir.glob("pass_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))
        if split != "training":
            passes = passes[:1]
        for pdir in passes:
            st = FeatureStore.open(pdir, expect=first_meta)
            if first_meta is None:
                first_meta = st.meta
            parts.append(st)
    if not parts:
        return None
    for st in parts:
        diffs = identity_mismatches(st.meta, first_meta)  # type: ignore[arg-type]
        if diffs:
            raise ConfigError(f"feature store {st.folder} differs from the others: {'; '.join(diffs)}")
    pm = [st.patch_mean for st in parts]
    return SplitFeatures(
        name=split,
        cls=torch.cat([st.cls for st in parts]),
        patch_mean=torch.cat(pm) if all(p is not None for p in pm) else None,  # type: ignore[misc]
        labels=torch.cat([st.labels for st in parts]),
        paths=[p for st in parts for p in st.rel_paths],
    )


def _image_split(opts: TrainClsConfig, encoder: nn.Module, env: Any,
                 role: str) -> tuple[SplitFeatures | None, list[str] | None]:
    from visionfm.engine.features import eval_transform, features_in_memory

    tf = eval_transform(opts.input_size, opts.modality, interpolation="bicubic")
    if opts.dataset_format == "vfm":
        from visionfm.data.layouts import VFMDataset

        split = VFM_STORE_SPLITS[role]
        if split not in VFMDataset.available_splits(opts.data_path):
            return None, None
        ds: Any = VFMDataset(opts.data_path, split, transform=tf, num_labels=opts.num_labels)
        classes = None
    else:
        from visionfm.data.layouts import ImageFolderDataset
        from visionfm.data.layouts.imagefolder import available_splits

        if role not in available_splits(opts.data_path):
            return None, None
        ds = ImageFolderDataset(opts.data_path, role, transform=tf)
        classes = list(ds.classes)
    f = features_in_memory(encoder, ds, env, opts.batch_size_per_gpu, opts.num_workers,
                           desc=f"features {role}" if env.is_main else None, amp=opts.amp)
    paths = [r.get("img_path") or r["rel_path"] for r in f["index"]]
    return SplitFeatures(role, f["cls"], f["patch_mean"], f["labels"], paths), classes


# -- the command ----------------------------------------------------------------------------------------


def _class_names(task: str, n_out: int, classes: list[str] | None, opts: TrainClsConfig) -> list[str]:
    """``--class_names``, else a ``classes.txt`` beside the labels / stores, else the ImageFolder classes, else
    indices. Binary tasks name both classes (negative first)."""
    from visionfm.data.names import resolve_names

    n = 2 if task == "binary" else n_out
    if task == "multilabel":
        default = [f"label_{i}" for i in range(n_out)]
    else:
        default = list(classes) if classes and len(classes) == n else [str(i) for i in range(n)]
    root = None if classes else (opts.features or opts.data_path)  # ImageFolder data: its folders name the classes
    return resolve_names(opts.class_names, root, n, option="class_names", what="labels" if task == "multilabel"
                         else "classes", default=default)


def run_train_cls(opts: TrainClsConfig) -> int:
    """``visionfm train-cls``: see the module docstring and docs/classification.md."""
    from visionfm.data.modalities import canonical_modality
    from visionfm.engine.distributed import command_session
    from visionfm.engine.features import (
        ORIGINAL_MODALITY,
        encoder_identity,
        load_frozen_encoder,
        pool_tokens,
        resolve_modality,
        resolved_encoder_options,
    )
    from visionfm.engine.logging import RunLogger
    from visionfm.engine.trainer import (
        FitConfig,
        TensorBatches,
        fit,
        load_decoder_checkpoint,
        load_decoder_weights,
        loss_step,
        selection_split,
        start_point,
        write_original_checkpoint,
    )
    from visionfm.io import save_json_atomic
    from visionfm.models.heads import build_cls_head
    from visionfm.reports.summary import format_summary

    with command_session(opts.device, seed=opts.seed) as env:
        run_dir = Path(opts.output_dir) / opts.name
        if opts.test and not opts.load_from:
            raise ConfigError("--test needs --load_from CHECKPOINT (the original silently trained instead)")
        classes: list[str] | None = None
        splits: dict[str, SplitFeatures | None] = {}
        if opts.features:
            # the stores record the encoder and modality that made them; a given --modality is checked
            recorded = (_first_store_meta(opts.features) or {}).get("modality")
            keys = ["weights_sha256", "weights_fingerprint", "arch", "patch_size", "input_size"]
            if opts.modality:
                keys.append("modality")
                if recorded and recorded != canonical_modality(opts.modality):
                    log.warning("--modality %s, but the stores under %s were extracted with %s statistics",
                                opts.modality, opts.features, recorded)
            else:
                opts = opts.replace(modality=recorded or ORIGINAL_MODALITY)
            expect = None
            if opts.pretrained_weights:
                enc = load_frozen_encoder(opts.pretrained_weights, opts.arch, opts.checkpoint_key,
                                          opts.patch_size, opts.input_size)
                opts = resolved_encoder_options(opts, enc)
                expect = encoder_identity(enc, opts.modality, opts.input_size, "cls")
                expect = {k: expect[k] for k in keys}
                del enc
            roles = ["test"] if opts.test else ["train", "val", "test"]
            for role in roles:
                splits[role] = load_store_split(opts.features, VFM_STORE_SPLITS[role], expect)
        else:
            encoder = load_frozen_encoder(opts.pretrained_weights, opts.arch, opts.checkpoint_key,
                                          opts.patch_size, opts.input_size).to(env.device)
            opts = resolved_encoder_options(opts, encoder).replace(
                modality=resolve_modality(opts.modality, opts.pretrained_weights))
            roles = ["test"] if opts.test else ["train", "val", "test"]
            for role in roles:
                splits[role], cl = _image_split(opts, encoder, env, role)
                classes = classes or cl
            del encoder
        test = splits.get("test")
        if test is None:
            raise DataFormatError(f"no test split found under {opts.features or opts.data_path}")
        if opts.dataset_format == "ImageNet" and classes and opts.num_labels not in (1, len(classes)):
            raise ConfigError(f"--num_labels {opts.num_labels} but {opts.data_path} has {len(classes)} class folders "
                              f"({', '.join(classes)})")
        ref_labels = (splits.get("train") or test).labels
        task, n_out = resolve_task(ref_labels, opts.num_labels, opts.task)
        names = _class_names(task, n_out, classes, opts)
        if opts.ordinal and task != "multiclass":
            raise ConfigError(f"--ordinal needs a multiclass task (ordered grades 0..C-1); this one is {task}")

        def head_input(s: SplitFeatures) -> torch.Tensor:
            return pool_tokens(s.cls, s.patch_mean, opts.n_last_blocks, opts.avgpool_patchtokens)

        in_dim = head_input(test).shape[1]
        model = build_cls_head(opts.head, in_dim, n_out, layers=3, bn_momentum=opts.bn_momentum)
        meta = {"task": task, "num_outputs": n_out, "in_dim": in_dim, "head": opts.head,
                "n_last_blocks": opts.n_last_blocks, "avgpool_patchtokens": opts.avgpool_patchtokens,
                "bn_momentum": opts.bn_momentum, "class_names": names, "modality": opts.modality,
                "ordinal": bool(opts.ordinal), "selection_metric": selection_metric_name(task, opts.ordinal)}

        if opts.test:
            info = load_decoder_weights(model, opts.load_from)
            model.to(env.device)
            metrics = _final_report(opts, run_dir, model, test, task, n_out, names, env, info.get("epoch"),
                                    "test (from --load_from)")
            if env.is_main:
                print(format_summary("train-cls", metrics, selection={
                    "metric": selection_metric_name(task, opts.ordinal), "epoch": info.get("epoch")},
                    paths={"report": run_dir / "report" / "report.html", "checkpoint": opts.load_from}))
            return 0

        train = splits["train"]
        if train is None:
            raise DataFormatError(f"no training split found under {opts.features or opts.data_path}")
        val, sel_split = selection_split(splits.get("val"), test, warn=env.is_main)
        meta["selection_split"] = sel_split
        resume_from, init_from = start_point(run_dir, opts.load_from, opts.resume, overwrite=opts.overwrite,
                                             is_main=env.is_main)  # before anything is written there
        run_logger = RunLogger(run_dir, enabled=env.is_main)
        if sel_split == "test":
            run_logger.log({"note": "no val split: model selection on the test split"})
        x_train = head_input(train)
        y_train = make_targets(train.labels, task)
        x_val, y_val = head_input(val), truth_for_metrics(val.labels, task)

        def evaluate(m: nn.Module) -> dict[str, Any]:
            return selection_metrics(y_val, predict_scores(m, x_val, task), task, names, ordinal=opts.ordinal)

        lr = opts.lr * opts.batch_size_per_gpu * env.world_size / 256.0
        cfg = FitConfig(epochs=opts.epochs, lr=lr, batch_size=opts.batch_size_per_gpu, optimizer="adamw",
                        weight_decay=0.05, scheduler="cosine", val_freq=opts.val_freq, seed=opts.seed, amp=False)
        batches = TensorBatches(x_train, y_train, cfg.batch_size, cfg.seed, env.rank, env.world_size, env.device)
        result = fit(model, batches, loss_step(make_loss(task)), evaluate, selection_key="selection",
                     higher_is_better=True, run_dir=run_dir, cfg=cfg, env=env, run_logger=run_logger, meta=meta,
                     identity=_identity(meta, opts), resume_from=resume_from, init_from=init_from)
        best = run_dir / "checkpoint_best"
        sd, info, _ = load_decoder_checkpoint(best)
        model.load_state_dict(sd)
        metrics = _final_report(opts, run_dir, model, test, task, n_out, names, env, result.best_epoch,
                                f"test (best epoch selected on {sel_split})")
        if env.is_main:
            info["test_metrics"] = {k: metrics.get(k) for k in ("accuracy", "auroc", "auroc_macro", "f1_macro")}
            save_json_atomic(info, best.with_suffix(".json"))
            if opts.head == "cls":  # the original's file name, e.g. checkpoint_teacher_linear.pth (§5.2)
                write_original_checkpoint(run_dir / f"checkpoint_{opts.checkpoint_key}_linear.pth", model.state_dict(),
                                          "cls", result.best_epoch, {"best_f1": result.best_value})
            # -- model package folder (issue 6): <run>/model/ from the selected (best) checkpoint --
            folder = _package_run(opts, run_dir, model, task, names, metrics)
            run_logger.log({"final_test": info["test_metrics"], "best_epoch": result.best_epoch,
                            "selection_split": sel_split})
            run_logger.close()
            print(format_summary("train-cls", metrics, selection={
                "metric": selection_metric_name(task, opts.ordinal), "value": result.best_value,
                "epoch": result.best_epoch, "epochs": opts.epochs, "split": sel_split, "higher_is_better": True},
                paths={"report": run_dir / "report" / "report.html", "model": folder, "log": run_dir / "log.txt"}))
        return 0


def _identity(meta: dict[str, Any], opts: TrainClsConfig) -> dict[str, Any]:
    """What makes a decoder run this run (compared on resume): data, encoder and head."""
    return {**{k: meta[k] for k in ("task", "num_outputs", "in_dim", "head", "n_last_blocks", "avgpool_patchtokens",
                                    "bn_momentum", "modality")},
            "data": str(opts.features or opts.data_path), "pretrained_weights": str(opts.pretrained_weights)}


def _final_report(opts: TrainClsConfig, run_dir: Path, model: nn.Module, test: SplitFeatures, task: str, n_out: int,
                  names: list[str], env: Any, epoch: Any, what: str) -> dict[str, Any]:
    from visionfm.engine.features import pool_tokens
    from visionfm.io import save_json_atomic
    from visionfm.reports import evaluate_classification_run

    x = pool_tokens(test.cls, test.patch_mean, opts.n_last_blocks, opts.avgpool_patchtokens)
    scores = predict_scores(model, x, task)
    y = truth_for_metrics(test.labels, task)
    if not env.is_main:
        return {}
    meta = {"name": opts.name, "modality": opts.modality, "evaluated": what, "checkpoint_epoch": epoch,
            "task": task, "head": opts.head, "n_test": len(test)}
    metrics = evaluate_classification_run(run_dir / "report", y, scores, task, names, paths=test.paths,
                                          ordinal=opts.ordinal or None, n_boot=opts.report_n_boot, seed=opts.seed,
                                          title=f"{opts.name} ({opts.modality}, {task})", meta=meta)
    save_json_atomic(per_image_results(test.paths, y, scores, task, n_out),
                     run_dir / f"{opts.name}_{opts.modality}_results.json")
    log.info("test: %s", {k: metrics.get(k) for k in ("accuracy", "auroc", "auroc_macro", "f1_macro")})
    return metrics


def _first_store_meta(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    from visionfm.data.features import FeatureStore

    for meta_file in sorted(Path(root).glob("*/*/pass_*/meta.json")):
        meta = FeatureStore.read_meta(meta_file.parent)
        if meta:
            return meta
    return None


def _package_run(opts: TrainClsConfig, run_dir: str | os.PathLike[str], head: nn.Module, task_kind: str,
                    class_names: Sequence[str], metrics: Mapping[str, Any] | None = None) -> Path | None:
    """``train-cls``: write ``<run>/model/`` from the selected head and the run's encoder.

    Returns the folder, or ``None`` (with a warning) when the encoder cannot be recovered (a feature
    store trained without ``--pretrained_weights`` whose source is not a file, or whose weights no
    longer match the store's fingerprint).
    """
    from visionfm.engine.features import weights_fingerprint
    from visionfm.packaging import encoder_for_package, model_folder_from_training

    folder = Path(run_dir) / "model"
    weights = opts.pretrained_weights
    modality, input_size, interpolation = opts.modality, int(opts.input_size), "bicubic"
    fingerprint = None
    meta: dict[str, Any] = {}
    if getattr(opts, "features", None):
        meta = _first_store_meta(opts.features) or {}
        interpolation = "bilinear"  # visionfm extract resizes bilinearly
        modality = meta.get("modality") or modality
        input_size = int(meta.get("input_size") or input_size)
        fingerprint = meta.get("weights_fingerprint")
        if not weights:
            src = meta.get("weights_source")
            weights = src if src and (src == "random" or Path(src).exists()) else None
            if weights is None:
                log.warning("model folder not written: the feature store's encoder (%s) is not available; "
                            "pass --pretrained_weights", src)
                return None
    arch, checkpoint_key, patch_size = opts.arch, opts.checkpoint_key, opts.patch_size
    if getattr(opts, "features", None):
        # The store records the encoder that made it; the train-cls defaults (vit_base, ...) do not apply.
        arch = meta.get("arch") or arch
        checkpoint_key = meta.get("checkpoint_key") or checkpoint_key
        patch_size = int(meta.get("patch_size") or patch_size)
    encoder = encoder_for_package(weights, arch, checkpoint_key, patch_size, input_size, opts.seed)
    if fingerprint and weights_fingerprint(encoder) != fingerprint:
        log.warning("model folder not written: the encoder rebuilt from %s does not match the feature store's "
                    "fingerprint", weights)
        return None
    in_dim = int(head.embed_dim)  # type: ignore[arg-type]
    n_out = int(head.num_classes)  # type: ignore[arg-type]
    if opts.head == "cls":
        head_args: dict[str, Any] = {"embed_dim": in_dim, "num_classes": n_out, "layers": 3,
                                     "bn_momentum": float(opts.bn_momentum)}
    else:
        head_args = {"embed_dim": in_dim, "num_classes": n_out}
    data = {"data_path": str(opts.features or opts.data_path),
            "source": "feature store" if getattr(opts, "features", None) else f"images ({opts.dataset_format} layout)",
            "evaluated_on": "the test split, with the epoch selected on val (or test when there is no val split)",
            "run": str(run_dir)}
    return model_folder_from_training(
        folder, encoder=encoder, head=head, task="classification", task_kind=task_kind, modality=modality,
        input_size=input_size, interpolation=interpolation, head_type=opts.head, head_args=head_args,
        features={"type": "pooled", "n_last_blocks": int(opts.n_last_blocks),
                  "avgpool": int(opts.avgpool_patchtokens)},
        class_names=class_names, metrics=metrics, data=data, name=f"{opts.name} ({opts.modality})",
        weights_source=str(weights))


# -- the packaged-model plug-in (the task registry of visionfm.engine.task) ------------------------------------
# Kept at the end of the module, apart from the training code above.


#: how a packaged classification (or forecasting) model's outputs are read (``config.json``'s ``task_kind``).
#: ``visionfm13``: the 13-output layout of ``train-multi-cls`` — softmax over outputs 0-4 (DR grade), a
#: sigmoid per output 5-12 (findings); labels are the arg-max grade (one-hot) and the thresholded findings.
MODEL_TASK_KINDS = ("binary", "multiclass", "multilabel", "visionfm13")
VISIONFM13_GRADES = 5
KIND_TEXT = {
    "binary": "binary classification (one sigmoid output)",
    "multiclass": "multi-class classification (softmax)",
    "multilabel": "multi-label classification (one sigmoid per label)",
    "visionfm13": "VisionFM 13-output classification (softmax DR grade over outputs 0-4, a sigmoid per finding)",
}


def output_thresholds(cfg: Mapping[str, Any], n: int) -> np.ndarray:
    """``config["thresholds"]`` for ``n`` sigmoid outputs (one value is repeated; absent: 0.5 each)."""
    t = cfg.get("thresholds")
    if t is None:
        return np.full(n, 0.5)
    arr = np.asarray(t, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        return np.full(n, float(arr[0]))
    if arr.size != n:
        raise ConfigError(f"{arr.size} thresholds for {n} outputs")
    return arr


@register_task
class Classification(Task):
    """A pooled-feature classifier read as ``config["task_kind"]`` (:data:`MODEL_TASK_KINDS`).

    Predictions: ``probabilities`` (softmax ``[B, C]``; sigmoid ``[B]`` for binary, ``[B, L]`` for
    multilabel / visionfm13), ``labels`` (index ``[B]``; 0/1 ``[B, L]``) and ``label_names``.
    """

    name = "classification"
    features = "pooled"
    selection_key = "selection"  # macro F1 (macro AUROC for multilabel), see selection_metrics
    higher_is_better = True

    def validate_config(self, cfg: Mapping[str, Any], bad: Callable[[str], Exception]) -> None:
        super().validate_config(cfg, bad)
        kind = cfg.get("task_kind")
        if kind not in MODEL_TASK_KINDS:
            raise bad(f"task {self.name} needs task_kind in {', '.join(MODEL_TASK_KINDS)}, got {kind!r}")
        names = cfg.get("class_names")
        if not (isinstance(names, list) and names):
            raise bad("a classification model needs a non-empty class_names list")
        if kind == "visionfm13" and len(names) <= VISIONFM13_GRADES:
            raise bad(f"task_kind visionfm13 needs more than {VISIONFM13_GRADES} class_names, got {len(names)}")

    def postprocess(self, cfg: Mapping[str, Any], outputs: torch.Tensor,
                    sizes: Sequence[tuple[int, int]]) -> dict[str, Any]:
        out, b = outputs, outputs.shape[0]
        names = list(cfg["class_names"])
        kind = cfg["task_kind"]
        if kind == "multiclass":
            probs = torch.softmax(out, dim=1).numpy()
            idx = probs.argmax(1)
            return {"probabilities": probs, "labels": idx, "label_names": [names[i] for i in idx]}
        if kind == "binary":
            p = torch.sigmoid(out.reshape(b, -1)[:, -1]).numpy()
            idx = (p >= output_thresholds(cfg, 1)[0]).astype(np.int64)
            return {"probabilities": p, "labels": idx,
                    "label_names": [names[i] if len(names) == 2 else str(i) for i in idx]}
        if kind == "visionfm13":
            g = VISIONFM13_GRADES
            grade = torch.softmax(out[:, :g], dim=1)
            p = torch.cat([grade, torch.sigmoid(out[:, g:])], dim=1).numpy()
            lab = np.zeros(p.shape, np.int64)
            lab[np.arange(b), grade.argmax(1).numpy()] = 1
            lab[:, g:] = (p[:, g:] >= output_thresholds(cfg, p.shape[1] - g)[None]).astype(np.int64)
            return {"probabilities": p, "labels": lab,
                    "label_names": [[names[j] for j in np.flatnonzero(r)] for r in lab]}
        p = torch.sigmoid(out).numpy()
        lab = (p >= output_thresholds(cfg, p.shape[1])[None]).astype(np.int64)
        return {"probabilities": p, "labels": lab,
                "label_names": [[names[j] for j in np.flatnonzero(r)] for r in lab]}

    def record(self, cfg: Mapping[str, Any], pred: Mapping[str, Any], i: int, names: Sequence[str]) -> dict[str, Any]:
        cls = list(cfg["class_names"])
        kind = cfg["task_kind"]
        p = np.asarray(pred["probabilities"][i], dtype=np.float64).reshape(-1)
        if kind == "binary":
            positive = cls[-1] if len(cls) == 2 else "1"
            return {"prediction": pred["label_names"][i], "index": int(pred["labels"][i]),
                    "probabilities": {positive: float(p[0])}}
        if kind == "multiclass":
            return {"prediction": pred["label_names"][i], "index": int(pred["labels"][i]),
                    "probabilities": {n: float(v) for n, v in zip(cls, p)}}
        return {"prediction": list(pred["label_names"][i]),
                "labels": {n: int(v) for n, v in zip(cls, pred["labels"][i])},
                "probabilities": {n: float(v) for n, v in zip(cls, p)}}

    def display(self, cfg: Mapping[str, Any], record: Mapping[str, Any], pred: Mapping[str, Any],
                names: Sequence[str], units: Sequence[str | None]) -> Display:
        probs = record["probabilities"]
        kind = cfg["task_kind"]
        if kind == "binary":
            (pos, p), = probs.items()
            neg = names[0] if len(names) == 2 else f"not {pos}"
            items = [{"name": pos, "probability": p, "positive": record["index"] == 1},
                     {"name": neg, "probability": 1.0 - p, "positive": record["index"] == 0}]
        elif kind == "multiclass":
            items = [{"name": n, "probability": v, "positive": n == record["prediction"]} for n, v in probs.items()]
        else:
            items = [{"name": n, "probability": v, "positive": bool(record["labels"][n])} for n, v in probs.items()]
        return Display(summary={"classes": sorted(items, key=lambda d: -d["probability"])})

    def card_task_line(self, cfg: Mapping[str, Any]) -> str:
        return KIND_TEXT.get(str(cfg.get("task_kind")), "classification")
