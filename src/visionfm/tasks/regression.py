"""Biomarker regression on frozen-encoder feature stores (``visionfm train-reg``; reference §5.6).

Differences from the original ``train_metric_reg_multi_decoder.py``:

* targets are standardised per target with the training split's mean and standard deviation
  (stored as ``target_mean``/``target_std`` in the checkpoint JSON); the head is trained with
  SmoothL1 (β = 1) on the standardised values, NaN (unmeasured) entries left out;
* model selection uses the mean MAE of the standardised targets on ``val`` (lower is better) — every
  target counts equally whatever its unit, and the first validation is always saved (the original
  started from a "best" relative MAE of 1.0 and saved nothing above 100 % error);
* predictions are mapped back to the original units and reported with
  :func:`~visionfm.reports.evaluate_regression_run`: MAE, RMSE, R², Pearson r per target and the
  original's relative MAE (``relative_mae_original``), computed once over the whole test set.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from visionfm.engine.task import Display, Task, register_task
from visionfm.errors import ConfigError, DataFormatError

if TYPE_CHECKING:
    from visionfm.config import TrainRegConfig

__all__ = ["standardisation", "masked_smooth_l1", "standardised_mae", "read_target_names", "Regression",
           "run_train_reg"]

log = logging.getLogger("visionfm.reg")


def standardisation(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-target ``(mean, std)`` over finite values; a constant or unmeasured target gets std 1."""
    y = labels.double()
    finite = torch.isfinite(y)
    n = finite.sum(dim=0)
    if bool((n == 0).any()):
        bad = int(torch.nonzero(n == 0).flatten()[0])
        raise DataFormatError(f"target {bad} has no measured value in the training split")
    y0 = torch.where(finite, y, torch.zeros_like(y))
    mean = y0.sum(dim=0) / n
    var = (torch.where(finite, y - mean, torch.zeros_like(y)) ** 2).sum(dim=0) / n
    std = var.sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return mean.float(), std.float()


def masked_smooth_l1(pred: torch.Tensor, target: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """SmoothL1 (mean) over the finite entries of ``target``."""
    finite = torch.isfinite(target)
    if not bool(finite.any()):
        return pred.sum() * 0.0
    return torch.nn.functional.smooth_l1_loss(pred[finite].float(), target[finite].float(), beta=beta)


def standardised_mae(pred_z: torch.Tensor, target_z: torch.Tensor) -> tuple[float | None, list[float | None]]:
    """Mean over targets of the per-target MAE on standardised values (finite entries only)."""
    finite = torch.isfinite(target_z)
    err = torch.where(finite, (pred_z - target_z).abs(), torch.zeros_like(pred_z)).double()
    n = finite.sum(dim=0)
    per = [float(e / k) if k > 0 else None for e, k in zip(err.sum(dim=0).tolist(), n.tolist())]
    defined = [v for v in per if v is not None]
    return (float(np.mean(defined)) if defined else None), per


def _targets_files(paths: Sequence[str], search_roots: Sequence[Path], entries: Sequence[str] = ()) -> list[Path]:
    """``targets.json`` files: given files; in given folders only those under a sub-folder named after one of
    ``entries`` (the chosen ``--datasets``); without ``paths``, those inside the ``search_roots`` (store folders)."""
    found: list[Path] = []
    wanted = set(entries)
    for p in paths:
        q = Path(p)
        if q.is_file():
            found.append(q)
        elif q.is_dir():
            hits = sorted(q.rglob("targets.json"))
            if not hits:
                raise ConfigError(f"--targets_json {q}: no targets.json under this folder")
            if wanted:
                chosen = [h for h in hits if wanted & set(h.relative_to(q).parts[:-1])]
                if not chosen:
                    raise ConfigError(
                        f"--targets_json {q}: none of its {len(hits)} targets.json files is in a folder named after "
                        f"--datasets ({', '.join(entries)}); pass the files of the chosen datasets themselves")
                hits = chosen
            found.extend(hits)
        else:
            raise ConfigError(f"--targets_json {q}: not found")
    if not paths:
        for root in search_roots:
            if root.is_dir():
                found.extend(sorted(root.glob("targets.json")) + sorted(root.glob("*/targets.json")))
    return found


def read_target_names(n: int, paths: Sequence[str] = (), search_roots: Sequence[Path] = (),
                      entries: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """Target names from ``targets.json`` files (``{"targets": [{"index", "name", "unit"}, ...]}``).

    Files come from ``--targets_json`` (files, or folders searched for the ``targets.json`` of the chosen
    ``entries``, e.g. the data folders next to the label files) or else the store folders. Files that give one
    index different names or units are refused (pooled data sets must measure the same targets). Returns
    ``(names, sources)``; ``target <j>`` where no file names an index.
    """
    files = _targets_files(paths, search_roots, entries)
    per_index: list[tuple[str, Path] | None] = [None] * n
    for f in files:
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
            targets = doc["targets"] if isinstance(doc, dict) else doc
            for i, t in enumerate(targets):
                idx = int(t.get("index", i))
                name = str(t["name"]) + (f" [{t['unit']}]" if t.get("unit") else "")
                if not 0 <= idx < n:
                    raise DataFormatError(f"target index {idx} is out of range for {n} targets", f)
                seen = per_index[idx]
                if seen is None:
                    per_index[idx] = (name, f)
                elif seen[0] != name:
                    raise DataFormatError(
                        f"target {idx} is {name!r} here but {seen[0]!r} in {seen[1]}; the datasets pooled in one "
                        "run must define the same targets (train them separately, or pass one --targets_json file)",
                        f)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, DataFormatError):
                raise
            raise DataFormatError(f"not a targets file ({exc.__class__.__name__}: {exc})", f) from None
    names = [v[0] if v else f"target {j}" for j, v in enumerate(per_index)]
    return names, [str(f) for f in files]


@register_task
class Regression(Task):
    """Regression: one class for training (the store driver) and for packaged models.

    Training (:func:`~visionfm.tasks.multimodal.run_multi_store_command`): :meth:`setup` checks the targets
    and standardises them with the training split, loss :meth:`loss` (SmoothL1 on standardised values, NaN
    left out), evaluation :meth:`evaluate`, test report :meth:`report`, model-folder fields
    :meth:`model_fields`. Packaged models: pooled-feature regression of ``target_names``; the head predicts
    standardised values, which :meth:`postprocess` returns in the original units
    (``z * target_std + target_mean``). The registry holds an unconfigured instance (``opts`` ``None``).
    """

    name = "regression"
    features = "pooled"
    names_key = "target_names"
    kind = "reg"
    selection_key = "mae_std_mean"
    higher_is_better = False
    #: in the original's checkpoint_<epoch>_linear.pth; ours holds the selected value, the mean MAE of the
    #: standardised targets (not the original's relative MAE)
    original_best_key = "best_mae"

    def __init__(self, opts: TrainRegConfig | None = None) -> None:
        self.opts = opts
        self.mean = torch.zeros(1)
        self.std = torch.ones(1)
        self.names: list[str] = []

    def setup(self, train_labels: torch.Tensor | None, test_labels: torch.Tensor, info: Any) -> dict[str, Any]:
        if self.opts is None:
            raise ConfigError("this Regression task is not configured for training (use Regression(opts))")
        n = int(test_labels.shape[1])
        if n != int(self.opts.num_labels):
            raise ConfigError(f"--num_labels {self.opts.num_labels} but the stores hold {n} targets per image")
        if train_labels is not None:
            self.mean, self.std = standardisation(train_labels)
        elif info and info.get("target_mean") is not None:
            self.mean = torch.tensor(info["target_mean"], dtype=torch.float32)
            self.std = torch.tensor(info["target_std"], dtype=torch.float32)
        else:
            raise ConfigError("--load_from has no target_mean/target_std (not a train-reg checkpoint)")
        if self.mean.numel() != n:
            raise ConfigError(f"the checkpoint standardises {self.mean.numel()} targets, the stores hold {n}")
        roots = [Path(self.opts.data_path) / e for e in self.opts.datasets]
        self.names, sources = read_target_names(n, self.opts.targets_json or (), roots, self.opts.datasets)
        if len(set(self.names)) != len(self.names):
            self.names = [f"{j}:{nm}" for j, nm in enumerate(self.names)]
        return {"task": "regression", "num_outputs": n, "target_names": self.names, "target_files": sources,
                "target_mean": self.mean.tolist(), "target_std": self.std.tolist(),
                "target_standardisation": "z = (y - target_mean) / target_std, training split"}

    def train_targets(self, labels: torch.Tensor) -> torch.Tensor:
        return (labels.float() - self.mean) / self.std

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return masked_smooth_l1(outputs, targets)

    def to_units(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float() * self.std + self.mean

    def evaluate(self, outputs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        zmae, _ = standardised_mae(outputs.float(), self.train_targets(labels))
        pred = self.to_units(outputs)
        finite = torch.isfinite(labels)
        err = torch.where(finite, (pred - labels).abs(), torch.zeros_like(pred)).sum(0) / finite.sum(0).clamp(min=1)
        return {"mae_std_mean": zmae, "mae_mean": float(err.mean())}

    def report(self, run_dir: Path, outputs: torch.Tensor, inputs: Any, meta: dict[str, Any]) -> dict[str, Any]:
        from visionfm.io import save_json_atomic
        from visionfm.reports import evaluate_regression_run
        from visionfm.tasks.multimodal import write_members

        a = self.opts
        assert a is not None, "setup() runs first"
        pred = self.to_units(outputs).double().numpy()
        y = inputs.labels.double().numpy()
        zmae, _ = standardised_mae(outputs.float(), self.train_targets(inputs.labels))
        title = f"{a.name} ({', '.join(meta.get('modalities', []))}; regression, fusion {a.fusion})"
        show = {k: v for k, v in meta.items() if k not in ("data", "target_mean", "target_std", "target_names")}
        m = evaluate_regression_run(run_dir / "report", y, pred, self.names, paths=list(inputs.ids),
                                    n_boot=a.report_n_boot, seed=a.seed, title=title, meta={"name": a.name, **show})
        save_json_atomic({i: {"gt": [float(v) for v in y[r]], "pred": [float(v) for v in pred[r]]}
                          for r, i in enumerate(inputs.ids)}, run_dir / f"{a.name}_results.json")
        write_members(run_dir, inputs)
        head = {k: m.get(k) for k in ("mae_mean", "rmse_mean", "r2_mean", "pearson_r_mean", "relative_mae_original")}
        head["mae_std_mean"] = zmae
        log.info("test: %s", head)
        return head

    def model_fields(self, meta: Mapping[str, Any], feat_dim: int, bn_momentum: float) -> dict[str, Any]:
        """The task's part of a pooled run's model folder (keywords of
        :func:`~visionfm.packaging.model_folder_from_training`)."""
        n = int(meta["num_outputs"])
        return {"task": self.name, "head_type": "reg",
                "head_args": {"embed_dim": feat_dim, "num_targets": n, "bn_momentum": bn_momentum},
                "target_names": list(meta["target_names"]), "target_mean": list(meta["target_mean"]),
                "target_std": list(meta["target_std"])}

    def validate_config(self, cfg: Mapping[str, Any], bad: Callable[[str], Exception]) -> None:
        super().validate_config(cfg, bad)
        names = cfg.get("target_names")
        mean, std = cfg.get("target_mean"), cfg.get("target_std")
        if not (isinstance(names, list) and names):
            raise bad("a regression model needs a non-empty target_names list")
        for key, v in (("target_mean", mean), ("target_std", std)):
            if v is not None and not (isinstance(v, list) and len(v) == len(names)):
                raise bad(f"{key} must list one number per target ({len(names)}), got {v!r}")

    def postprocess(self, cfg: Mapping[str, Any], outputs: torch.Tensor,
                    sizes: Sequence[tuple[int, int]]) -> dict[str, Any]:
        v = outputs.numpy().astype(np.float64)
        if cfg.get("target_std") is not None:
            v = v * np.asarray(cfg["target_std"], dtype=np.float64)[None]
        if cfg.get("target_mean") is not None:
            v = v + np.asarray(cfg["target_mean"], dtype=np.float64)[None]
        return {"values": v}

    def record(self, cfg: Mapping[str, Any], pred: Mapping[str, Any], i: int, names: Sequence[str]) -> dict[str, Any]:
        return {"values": {n: float(v) for n, v in zip(cfg["target_names"], pred["values"][i])}}

    def display_names(self, cfg: Mapping[str, Any]) -> tuple[list[str], list[str | None] | None]:
        """Target names without their units, and the units: ``config["target_units"]`` (one per target) or
        the unit written in the name (``"IOP [mmHg]"``, ``"axial length (mm)"``)."""
        from visionfm.reports.units import split_unit

        names = [str(n) for n in self.output_names(cfg)]
        given = cfg.get("target_units")
        if isinstance(given, list) and len(given) == len(names):
            return names, [None if u in (None, "") else str(u) for u in given]
        split = [split_unit(n) for n in names]
        return [n for n, _ in split], [u for _, u in split]

    def display(self, cfg: Mapping[str, Any], record: Mapping[str, Any], pred: Mapping[str, Any],
                names: Sequence[str], units: Sequence[str | None]) -> Display:
        units = list(units) + [None] * len(names)
        return Display(summary={"values": [{"name": n, "value": v, "unit": units[i]}
                                           for i, (n, v) in enumerate(zip(names, record["values"].values()))]})

    def card_task_line(self, cfg: Mapping[str, Any]) -> str:
        return "regression (values reported in the original units)"


def run_train_reg(opts: TrainRegConfig) -> int:
    """``visionfm train-reg``: see docs/multimodal-and-regression.md."""
    from visionfm.tasks.multimodal import run_multi_store_command

    return run_multi_store_command(opts, Regression(opts))
