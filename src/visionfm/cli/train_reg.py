"""``visionfm train-reg``: biomarker regression on several feature stores (original
``train_metric_reg_multi_decoder.py``, reference §5.6; standardised targets and fusion are additions)."""

from __future__ import annotations

import argparse

from visionfm.cli.options import VFMArgumentParser, add_store_decoder_arguments, to_config


def add_arguments(p: VFMArgumentParser) -> None:
    add_store_decoder_arguments(p, epochs=500, output_dir="./results", num_labels=38,
                                num_labels_help="number of regression targets")
    p.add_argument("--targets_json", nargs="*", default=None,
                   help="targets.json files, or data folders to search for them (target names in reports); "
                        "default: targets.json inside the store folders")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"],
                   help="adamw: wd 0.05 with a cosine schedule (the original used a constant LR); sgd: momentum 0.9")


def run(args: argparse.Namespace) -> int:
    from visionfm.config import TrainRegConfig
    from visionfm.tasks.regression import run_train_reg

    return run_train_reg(to_config(TrainRegConfig, args))
