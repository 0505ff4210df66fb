"""``visionfm train-landmark``: heatmap landmark detection on a frozen encoder (reference §5.5)."""

from __future__ import annotations

import argparse

from visionfm.cli.options import VFMArgumentParser, add_dense_arguments, to_config


def add_arguments(p: VFMArgumentParser) -> None:
    add_dense_arguments(p, modality="UBM", num_labels=3, output_dir=".", data_path=None,
                        labels_help="number of landmarks K")
    p.add_argument("--landmark_names", nargs="+", default=None, metavar="NAME",
                   help="display names of the K landmarks in label order; default: a landmarks.txt beside the "
                        "labels, else landmark_0, landmark_1, ...")
    p.add_argument("--sigma", type=float, default=2.0,
                   help="std of the Gaussian target heatmaps, in pixels at the input resolution")
    p.add_argument("--affine_p", type=float, default=0.5,
                   help="probability of the random affine jitter (degrees 5, translate 0.05) in training")


def run(args: argparse.Namespace) -> int:
    from visionfm.config import TrainLandmarkConfig
    from visionfm.tasks.landmark import run_train_landmark

    return run_train_landmark(to_config(TrainLandmarkConfig, args))
