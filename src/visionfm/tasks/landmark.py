"""``visionfm train-landmark``: heatmap landmark detection on a frozen encoder (reference §5.5).

* Labels: ``.npy`` heatmaps ``[H, W, K]`` or points ``[K, 2]``; the reader turns both into (x, y)
  points, which move with the image through the joint transform and are rendered as Gaussian
  target distributions (``--sigma`` pixels) at the training resolution. The original cast its
  resized heatmaps to int64, losing soft targets and single-pixel points (item 15).
* Model: a UNETR head with K output channels; loss :func:`~visionfm.tasks.losses.spatial_softmax_ce`
  (``log_softmax`` over H·W, stable; the original could overflow).
* Decoding: arg-max pixel refined by its 3×3 probability-weighted centroid.
* Metrics (:class:`~visionfm.metrics.dense.LandmarkMeter`): mean radial error in pixels at the
  input resolution (``mre_px``, the original's ``metric_landmarks``, the selection metric, lower is
  better) and at the original image resolution (``mre_original_px``), per landmark, and the success
  rates within 2/4/8 px.
* Outputs: ``predictions.json`` (points at the original resolution per image), ``overlays/*.png``
  (truth circles, predictions crosses), ``metrics.json``, ``report.html``, checkpoints, ``log.txt``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from visionfm.data.paired import LandmarkTransform, decode_heatmaps, render_heatmaps, to_uint8_image
from visionfm.engine.task import Display, Task, register_task
from visionfm.errors import ConfigError
from visionfm.tasks.dense_common import DenseSamples, run_dense
from visionfm.tasks.losses import spatial_softmax_ce

if TYPE_CHECKING:
    from visionfm.config import TrainLandmarkConfig

__all__ = ["Landmark", "run_train_landmark"]


@register_task
class Landmark(Task):
    """Landmark detection: one class for training (the dense driver) and for packaged models.

    Training (:func:`~visionfm.tasks.dense_common.run_dense`): reader :meth:`dataset` (points from heat maps
    or ``[K, 2]`` arrays), loss :meth:`loss` (spatial soft-max cross-entropy against Gaussians of ``sigma``),
    evaluation :meth:`new_meter` / :meth:`update` (radial errors), :meth:`summary`, :meth:`writer`.
    Packaged models: one heat map per landmark, decoded by :func:`~visionfm.data.paired.decode_heatmaps`
    (arg-max refined by a 3x3 centroid) and scaled to each original size; predictions ``points_input``
    ``[B, K, 2]`` (input pixels) and ``points`` (original pixels), ``(x, y)``.
    The registry holds an instance with the defaults; :meth:`for_run` configures one for a training run.

    Args:
        num_landmarks: K.
        input_size: side S of the square input.
        mean / std: normalisation statistics.
        sigma: standard deviation of the target Gaussians, in pixels at the input resolution.
        augment_affine_p: probability of the random affine jitter in training (0.5, the original).
    """

    name = "landmark"
    features = "dense"
    names_key = "landmark_names"
    selection_key = "mre_px"
    original_best_key = "best_mre"  # in the original's checkpoint_<epoch>_linear.pth
    higher_is_better = False

    def __init__(self, num_landmarks: int = 1, input_size: int = 224, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), sigma: float = 2.0, augment_affine_p: float = 0.5,
                 landmark_names: Sequence[str] | None = None) -> None:
        if num_landmarks < 1:
            raise ConfigError(f"--num_labels (landmarks) must be >= 1, got {num_landmarks}")
        if sigma <= 0:
            raise ConfigError(f"--sigma must be positive, got {sigma}")
        self.num_outputs = int(num_landmarks)
        self.input_size = int(input_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.sigma = float(sigma)
        self.affine_p = float(augment_affine_p)
        names = list(landmark_names) if landmark_names else [f"landmark_{i}" for i in range(self.num_outputs)]
        if len(names) != self.num_outputs:
            raise ConfigError(f"--landmark_names: {len(names)} names for {self.num_outputs} landmarks")
        self.landmark_names = [str(n) for n in names]

    @classmethod
    def for_run(cls, opts: TrainLandmarkConfig) -> Landmark:
        """The task configured for one ``train-landmark`` run (landmarks, input size, statistics, targets)."""
        from visionfm.data.modalities import get_stats
        from visionfm.data.names import LANDMARKS_FILE, resolve_names

        mean, std = get_stats(opts.modality)
        names = resolve_names(opts.landmark_names, opts.data_path, opts.num_labels, option="landmark_names",
                              filename=LANDMARKS_FILE, what="landmarks",
                              default=[f"landmark_{i}" for i in range(opts.num_labels)])
        return cls(opts.num_labels, opts.input_size, mean, std, sigma=opts.sigma, augment_affine_p=opts.affine_p,
                   landmark_names=names)

    def dataset(self, root: str, split: str, train: bool) -> DenseSamples:
        from visionfm.data.layouts import LandmarkDataset

        base = LandmarkDataset(root, split, self.num_outputs)
        tf = LandmarkTransform(self.input_size, self.mean, self.std, train=train, affine_p=self.affine_p)
        return DenseSamples(base, tf)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        h, w = logits.shape[-2:]
        return spatial_softmax_ce(logits, render_heatmaps(target, h, w, self.sigma))

    def new_meter(self) -> Any:
        from visionfm.metrics.dense import LandmarkMeter

        return LandmarkMeter(self.num_outputs, thresholds=(2, 4, 8))

    def _scale(self, orig_hw: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Per-image (x, y) factors from input to original pixels, ``[B, 2]``."""
        h, w = logits.shape[-2:]
        return torch.stack([orig_hw[:, 1].double() / w, orig_hw[:, 0].double() / h], 1)

    def update(self, meter: Any, logits: torch.Tensor, target: torch.Tensor, orig_hw: torch.Tensor) -> None:
        pred = decode_heatmaps(logits)
        meter.update(pred.cpu().numpy(), target.cpu().numpy(), scale=self._scale(orig_hw, logits).numpy())

    def summary(self, metrics: dict[str, Any]) -> dict[str, Any]:
        out = {k: metrics.get(k) for k in ("mre_px", "mre_original_px")}
        for t, v in (metrics.get("success_rate_px") or {}).items():
            out[f"success_{t}"] = v
        return out

    def writer(self, out_dir: Path, names: Sequence[str], n_overlays: int) -> _LandmarkWriter:
        return _LandmarkWriter(self, Path(out_dir), names, n_overlays)

    def output_names(self, cfg: Mapping[str, Any]) -> list[Any]:
        """``landmark_names``, or ``landmark_0``, ``landmark_1``, ... (one per head output)."""
        from visionfm.packaging.model_folder import num_outputs

        return list(cfg.get(self.names_key) or [f"landmark_{i}" for i in range(num_outputs(cfg))])

    def postprocess(self, cfg: Mapping[str, Any], outputs: torch.Tensor,
                    sizes: Sequence[tuple[int, int]]) -> dict[str, Any]:
        pts = decode_heatmaps(outputs).double()
        h, w = outputs.shape[-2:]
        full = []
        for i in range(outputs.shape[0]):
            oh, ow = sizes[i]
            scale = torch.tensor([ow / w, oh / h], dtype=torch.float64)
            full.append(((pts[i] + 0.5) * scale - 0.5).numpy())
        return {"points_input": pts.numpy(), "points": np.stack(full) if full else np.zeros((0, 0, 2))}

    def record(self, cfg: Mapping[str, Any], pred: Mapping[str, Any], i: int, names: Sequence[str]) -> dict[str, Any]:
        return {"points": {names[k] if k < len(names) else f"landmark_{k}": [float(v) for v in pt]
                           for k, pt in enumerate(pred["points"][i])}}

    def save_outputs(self, cfg: Mapping[str, Any], pred: Mapping[str, Any], i: int, image: Any, folder: Any,
                     key: str, title: str, overlays: bool) -> dict[str, str]:
        """With ``overlays``: ``overlays/<key>.png`` (the predicted points as crosses over the image)."""
        if not overlays:
            return {}
        from visionfm.reports import save_overlay

        folder = Path(folder)
        dst = folder / "overlays" / f"{key}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        save_overlay(np.asarray(image.convert("RGB")), dst, pred_points=pred["points"][i], title=title,
                     landmark_names=[str(n) for n in self.output_names(cfg)])
        return {"overlay": dst.relative_to(folder).as_posix()}

    def display(self, cfg: Mapping[str, Any], record: Mapping[str, Any], pred: Mapping[str, Any],
                names: Sequence[str], units: Sequence[str | None]) -> Display:
        from visionfm.reports.colours import display_colour, hex_colour

        marks = [{"name": n, "x": xy[0], "y": xy[1], "colour": hex_colour(display_colour(k + 1))}
                 for k, (n, xy) in enumerate(record["points"].items())]
        return Display(summary={"landmarks": marks}, points=[(d["x"], d["y"]) for d in marks])

    def card_task_line(self, cfg: Mapping[str, Any]) -> str:
        return "landmark detection (heatmap arg-max refined by a 3x3 centroid)"


class _LandmarkWriter:
    """Collects predicted points (original resolution) and draws the first ``n_overlays`` overlays."""

    def __init__(self, task: Landmark, out_dir: Path, names: Sequence[str], n_overlays: int) -> None:
        self.task, self.out_dir, self.names, self.n_overlays = task, out_dir, list(names), n_overlays
        self.records: dict[str, Any] = {}
        self.figures: list[tuple[str, Path]] = []

    def add(self, logits: torch.Tensor, images: torch.Tensor, targets: torch.Tensor, orig_hw: torch.Tensor,
            index: torch.Tensor) -> None:
        from visionfm.reports import save_overlay

        pred = decode_heatmaps(logits).cpu()
        scale = self.task._scale(orig_hw, logits).float()
        for i in range(len(pred)):
            rel = self.names[int(index[i])]
            # Pixel-index coordinates: the centre of pixel c maps to (c + 0.5)·s − 0.5.
            full = (pred[i] + 0.5) * scale[i] - 0.5
            truth = (targets[i].cpu() + 0.5) * scale[i] - 0.5
            self.records[rel] = {"pred_xy": full.tolist(), "true_xy": [[None if v != v else v for v in p]
                                                                        for p in truth.tolist()],
                                 "input_pred_xy": pred[i].tolist(), "orig_hw": [int(v) for v in orig_hw[i]]}
            if len(self.figures) < self.n_overlays:
                path = self.out_dir / "overlays" / (Path(rel).parts[0] + "_" + Path(rel).stem + ".png")
                path.parent.mkdir(parents=True, exist_ok=True)
                img = to_uint8_image(images[i], self.task.mean, self.task.std).numpy()
                save_overlay(img, path, pred_points=pred[i].numpy(), true_points=targets[i].cpu().numpy(),
                             title=Path(rel).name, landmark_names=self.task.landmark_names)
                self.figures.append((f"{rel} — truth circles, prediction crosses (input resolution)", path))

    def finish(self) -> list[tuple[str, Path]]:
        from visionfm.io import save_json_atomic

        if self.records:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_json_atomic({"coordinates": "(x, y) pixel indices at the original image resolution",
                              "landmark_names": list(self.task.landmark_names), "images": self.records},
                             self.out_dir / "predictions.json")
        return self.figures


def run_train_landmark(opts: TrainLandmarkConfig) -> int:
    """``visionfm train-landmark``: train, report, then package ``<run>/model/`` from ``checkpoint_best``."""
    from visionfm.engine.distributed import is_main_process
    from visionfm.engine.features import resolve_modality
    from visionfm.tasks.dense_common import dense_summary, package_dense_run

    # the original train_landmark_decoder.py normalises with UBM statistics by default
    opts = opts.replace(modality=resolve_modality(opts.modality, opts.pretrained_weights, "UBM"))
    task = Landmark.for_run(opts)
    rc = run_dense(opts, task)
    if rc == 0:
        folder = package_dense_run(opts, "landmark", task.landmark_names)
        if is_main_process():
            print(dense_summary(opts, "train-landmark", folder))
    return rc
