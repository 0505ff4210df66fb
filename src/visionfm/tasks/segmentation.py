"""``visionfm train-seg``: segmentation decoders on a frozen encoder (reference §5.4).

* ``--num_labels 1``: binary, one sigmoid channel, masks {0, 1} (or {0, 255}); prediction
  ``sigmoid > 0.5``. ``--num_labels C > 1``: softmax over C channels, prediction arg-max.
* Loss: :class:`~visionfm.tasks.losses.DiceFocalLoss` (MONAI semantics, background included).
* Metrics (:class:`~visionfm.metrics.dense.SegmentationMeter`, per image then averaged over the whole
  split): Dice and IoU per class; ``dice_mean`` / ``iou_mean`` **exclude the background** (the
  selection metric); the original's multi-class value (all classes incl. background) is
  ``dice_mean_all_classes_original``; binary runs add HD95 (pixels at the input resolution).
  Masks are compared at the input resolution S, as the original.
* Outputs in ``<output_dir>/<name>/``: ``predictions/<dataset>/<stem>.png`` (palette PNG of class
  ids at the image's original size, readable back by the segmentation reader), ``overlays/*.png``
  (ground truth solid, prediction dashed), ``metrics.json``, ``report.html``, checkpoints, ``log.txt``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from visionfm.data.paired import SegTransform, to_uint8_image
from visionfm.engine.task import Display, Task, register_task
from visionfm.errors import ConfigError, DataFormatError
from visionfm.reports.colours import mask_png
from visionfm.tasks.dense_common import DenseSamples, run_dense
from visionfm.tasks.losses import DiceFocalLoss

if TYPE_CHECKING:
    from visionfm.config import TrainSegConfig

__all__ = ["Segmentation", "predict_labels", "run_train_seg"]



def predict_labels(logits: torch.Tensor) -> torch.Tensor:
    """Class ids ``[B, H, W]``: ``logit > 0`` (sigmoid > 0.5) for one channel, else arg-max."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(1)


@register_task
class Segmentation(Task):
    """Segmentation: one class for training (the dense driver) and for packaged models.

    Training (:func:`~visionfm.tasks.dense_common.run_dense`): reader :meth:`dataset`, loss :meth:`loss`
    (Dice + focal), evaluation :meth:`new_meter` / :meth:`update` (Dice, IoU; HD95 when binary), per-epoch
    :meth:`summary`, test outputs :meth:`writer`. Packaged models: class maps, ``logit > 0`` for one
    channel, else arg-max (:func:`predict_labels`), brought back to each original size (nearest);
    predictions ``masks_input`` ``[B, S, S]`` and ``masks`` (a list, each ``[h, w]``).
    The registry holds an instance with the defaults; :meth:`for_run` configures one for a training run.

    Args:
        num_labels: 1 (binary) or the number of classes including background.
        input_size: side S of the square input.
        mean / std: normalisation statistics.
        class_names: names of the ``max(2, num_labels)`` classes.
    """

    name = "segmentation"
    features = "dense"
    selection_key = "dice_mean"
    original_best_key = "best_dice"  # in the original's checkpoint_<epoch>_linear.pth
    higher_is_better = True

    def __init__(self, num_labels: int = 1, input_size: int = 224, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), class_names: Sequence[str] | None = None) -> None:
        if num_labels < 1:
            raise ConfigError(f"--num_labels must be >= 1 (1 = binary), got {num_labels}")
        self.num_labels = int(num_labels)
        self.num_outputs = self.num_labels
        self.num_classes = max(2, self.num_labels)
        self.input_size = int(input_size)
        self.mean, self.std = tuple(mean), tuple(std)
        if class_names is None:
            class_names = ["background", "foreground"] if self.num_labels == 1 else (
                ["background"] + [f"class {c}" for c in range(1, self.num_classes)])
        if len(class_names) != self.num_classes:
            raise ConfigError(f"--class_names: {len(class_names)} names for {self.num_classes} classes (background "
                              "first; binary segmentation has 2)")
        self.class_names = list(class_names)
        self.criterion = DiceFocalLoss()

    @classmethod
    def for_run(cls, opts: TrainSegConfig) -> Segmentation:
        """The task configured for one ``train-seg`` run (labels, input size, the modality's statistics)."""
        from visionfm.data.modalities import get_stats
        from visionfm.data.names import find_names_file

        mean, std = get_stats(opts.modality)
        names = opts.class_names or None
        if names is None:  # a classes.txt beside the masks (background first), checked by __init__
            found = find_names_file(opts.data_path)
            names = found[0] if found else None
            n_cls = max(2, int(opts.num_labels))
            if found and len(found[0]) != n_cls:
                raise DataFormatError(f"{len(found[0])} names for the {n_cls} classes of this task (background "
                                      "first); expected one line per class", found[1])
        return cls(opts.num_labels, opts.input_size, mean, std, names)

    def dataset(self, root: str, split: str, train: bool) -> DenseSamples:
        from visionfm.data.layouts import SegmentationDataset

        base = SegmentationDataset(root, split, self.num_labels)
        return DenseSamples(base, SegTransform(self.input_size, self.mean, self.std, train=train))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits, target)

    def new_meter(self) -> Any:
        from visionfm.metrics.dense import SegmentationMeter

        return SegmentationMeter(self.num_classes, include_background=False, class_names=self.class_names,
                                 hd95=self.num_labels == 1)

    def update(self, meter: Any, logits: torch.Tensor, target: torch.Tensor, orig_hw: torch.Tensor) -> None:
        meter.update(predict_labels(logits).cpu().numpy(), target.cpu().numpy())

    def summary(self, metrics: dict[str, Any]) -> dict[str, Any]:
        out = {k: metrics.get(k) for k in ("dice_mean", "iou_mean", "dice_mean_all_classes_original")}
        if "hd95_mean" in metrics:
            out["hd95_mean"] = metrics["hd95_mean"]
        return out

    def writer(self, out_dir: Path, names: Sequence[str], n_overlays: int) -> _SegWriter:
        return _SegWriter(self, Path(out_dir), names, n_overlays)

    def postprocess(self, cfg: Mapping[str, Any], outputs: torch.Tensor,
                    sizes: Sequence[tuple[int, int]]) -> dict[str, Any]:
        lab = predict_labels(outputs)
        masks = [F.interpolate(lab[i][None, None].float(), size=tuple(sizes[i]), mode="nearest")[0, 0]
                 .numpy().astype(np.uint8) for i in range(outputs.shape[0])]
        return {"masks_input": lab.numpy().astype(np.uint8), "masks": masks}

    def record(self, cfg: Mapping[str, Any], pred: Mapping[str, Any], i: int, names: Sequence[str]) -> dict[str, Any]:
        """``class_fraction``: the share of the image's pixels in each class (background included)."""
        m = pred["masks"][i]
        names_c = list(names) or [f"class {c}" for c in range(int(m.max()) + 1)]
        ncls = max(2, len(names_c))
        counts = np.bincount(m.reshape(-1).astype(np.int64), minlength=ncls)
        return {"class_fraction": {str(names_c[c]) if c < len(names_c) else f"class {c}": float(counts[c] / m.size)
                                   for c in range(ncls)}}

    def save_outputs(self, cfg: Mapping[str, Any], pred: Mapping[str, Any], i: int, image: Any, folder: Any,
                     key: str, title: str, overlays: bool) -> dict[str, str]:
        """``masks/<key>.png`` (class ids, :data:`~visionfm.reports.colours.MASK_PALETTE`) and, with
        ``overlays``, ``overlays/<key>.png`` (the predicted classes as translucent fills over the image)."""
        from visionfm.reports import save_overlay
        from visionfm.reports.colours import mask_png

        folder = Path(folder)
        mask = pred["masks"][i]
        dst = folder / "masks" / f"{key}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        mask_png(mask).save(dst)
        files = {"mask": dst.relative_to(folder).as_posix()}
        if overlays:
            dst = folder / "overlays" / f"{key}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            save_overlay(np.asarray(image.convert("RGB")), dst, pred_mask=mask,
                         class_names=self.output_names(cfg) or None, title=title)
            files["overlay"] = dst.relative_to(folder).as_posix()
        return files

    def display(self, cfg: Mapping[str, Any], record: Mapping[str, Any], pred: Mapping[str, Any],
                names: Sequence[str], units: Sequence[str | None]) -> Display:
        from visionfm.reports.colours import display_colour, hex_colour

        mask = pred["masks"][0]
        fractions = list(record["class_fraction"].items())
        return Display(
            summary={"segmentation": [{"id": c, "name": n, "fraction": f, "colour": hex_colour(display_colour(c))}
                                      for c, (n, f) in enumerate(fractions) if c > 0]},
            mask=mask, n_classes=max(len(names), int(mask.max()) + 1, 2))

    def card_task_line(self, cfg: Mapping[str, Any]) -> str:
        n = int(cfg.get("head", {}).get("args", {}).get("num_classes", 1))
        return "binary segmentation (sigmoid > 0.5)" if n == 1 else f"semantic segmentation ({n} classes, arg-max)"


class _SegWriter:
    """Saves predicted masks (original size, palette PNG) and the first ``n_overlays`` overlays."""

    def __init__(self, task: Segmentation, out_dir: Path, names: Sequence[str], n_overlays: int) -> None:
        self.task, self.out_dir, self.names, self.n_overlays = task, out_dir, list(names), n_overlays
        self.figures: list[tuple[str, Path]] = []

    def add(self, logits: torch.Tensor, images: torch.Tensor, targets: torch.Tensor, orig_hw: torch.Tensor,
            index: torch.Tensor) -> None:
        from visionfm.reports import save_overlay

        labels = predict_labels(logits)
        for i in range(len(labels)):
            rel = Path(self.names[int(index[i])])
            h, w = (int(v) for v in orig_hw[i])
            full = F.interpolate(labels[i][None, None].float(), size=(h, w), mode="nearest")[0, 0]
            dst = self.out_dir / "predictions" / rel.parts[0] / (rel.stem + ".png")
            dst.parent.mkdir(parents=True, exist_ok=True)
            mask_png(full.cpu().numpy()).save(dst)
            if len(self.figures) < self.n_overlays:
                path = self.out_dir / "overlays" / f"{rel.parts[0]}_{rel.stem}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                img = to_uint8_image(images[i], self.task.mean, self.task.std).numpy()
                save_overlay(img, path, pred_mask=labels[i].cpu().numpy(), true_mask=targets[i].cpu().numpy(),
                             class_names=self.task.class_names, title=str(rel.name))
                self.figures.append((f"{rel} — prediction as a translucent fill, ground truth as an outline", path))

    def finish(self) -> list[tuple[str, Path]]:
        return self.figures


def run_train_seg(opts: TrainSegConfig) -> int:
    """``visionfm train-seg``: train, report, then package ``<run>/model/`` from ``checkpoint_best``."""
    from visionfm.engine.distributed import is_main_process
    from visionfm.engine.features import resolve_modality
    from visionfm.tasks.dense_common import dense_summary, package_dense_run

    opts = opts.replace(modality=resolve_modality(opts.modality, opts.pretrained_weights))
    task = Segmentation.for_run(opts)
    rc = run_dense(opts, task)
    if rc == 0:
        folder = package_dense_run(opts, "segmentation", task.class_names)
        if is_main_process():
            print(dense_summary(opts, "train-seg", folder))
    return rc
