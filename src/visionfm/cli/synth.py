"""``visionfm synth``: write learnable synthetic data sets in the original VisionFM layouts.

Replaces the original ``evaluation/random_data.py`` (same ``--task``, ``--dst_dir``, ``--num`` and
``--img_size`` flags and the same folder layouts), adds ``forecasting``, ``val`` splits and a
RETFound/ImageFolder tree for ``finetune``, and draws images whose labels follow from their content.
See docs/synthetic-data.md.
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]

_TASKS = ("pretrain", "single_cls", "multi_cls", "segmentation", "landmark", "metric_reg", "forecasting", "finetune")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=_TASKS, default="pretrain",
                        help="which data set to write: the original layouts of pretrain, train-cls (single_cls), "
                             "train-multi-cls (multi_cls), train-seg (segmentation), train-landmark (landmark), "
                             "train-reg (metric_reg), train-forecast (forecasting); finetune: the RETFound/"
                             "ImageFolder tree FundusFinetune/{train,val,test}/<class>/ for finetune and evaluate")
    parser.add_argument("--output_dir", "--dst_dir", dest="dst_dir", default="./", metavar="OUTPUT_DIR",
                        help="output root folder, created if missing (the original's --dst_dir)")
    parser.add_argument("--num", type=int, default=500,
                        help="images per split (training/train and test; val gets max(2, num//4)), or per modality "
                             "for pretrain")
    parser.add_argument("--img_size", type=int, default=512, help="side of the square images in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    parser.add_argument("--num_classes", type=int, default=4,
                        help="segmentation classes: 2 vessel/background, 3 + optic disc, 4 + lesions")
    parser.add_argument("--landmark_format", choices=("map", "points"), default="map",
                        help="landmark labels: uint8 [S,S,3] point maps (original) or float32 [3,2] (x, y) points")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes (output does not depend on it)")


def _short(summary: dict) -> list[str]:
    lines = [f"synth {summary['task']}: {summary['files_written']} files in {summary['seconds']:.1f} s "
             f"({summary['img_size']} px, seed {summary['seed']})"]
    for root in summary["root"]:
        lines.append(f"  {root}")
    dist = summary["label_distribution"]
    for key, n in summary["counts"].items():
        extra = ""
        d = dist.get(key)
        if summary["task"] in ("single_cls", "forecasting", "finetune") and d:
            extra = "  labels " + " ".join(f"{k}:{v}" for k, v in d.items())
        elif summary["task"] == "multi_cls" and d:
            extra = "  positives " + ",".join(str(v) for v in d.values())
        elif summary["task"] == "segmentation" and d:
            extra = "  class pixel fractions " + " ".join(f"{k}:{v:.3f}" for k, v in d.items())
        lines.append(f"  {key}: {n} images{extra}")
    return lines


def run(args: argparse.Namespace) -> int:
    from visionfm.data.synth import generate

    summary = generate(
        args.task,
        args.dst_dir,
        num=args.num,
        img_size=args.img_size,
        seed=args.seed,
        num_classes=args.num_classes,
        landmark_format=args.landmark_format,
        workers=args.workers,
    )
    print("\n".join(_short(summary)))
    return 0
