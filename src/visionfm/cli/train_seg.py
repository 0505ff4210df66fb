"""``visionfm train-seg``: a segmentation decoder (UNETR or linear) on a frozen encoder (reference §5.4)."""

from __future__ import annotations

import argparse

from visionfm.cli.options import VFMArgumentParser, add_dense_arguments, to_config


def add_arguments(p: VFMArgumentParser) -> None:
    add_dense_arguments(p, modality="Fundus", num_labels=4, output_dir="./results",
                        data_path="./dataset/seg_random/VesselSegmentation",
                        labels_help="classes including background; 1 = binary (sigmoid)")
    p.add_argument("--class_names", nargs="+", default=None,
                   help="names of the classes (background first; 2 names when --num_labels 1)")


def run(args: argparse.Namespace) -> int:
    from visionfm.config import TrainSegConfig
    from visionfm.tasks.segmentation import run_train_seg

    return run_train_seg(to_config(TrainSegConfig, args))
