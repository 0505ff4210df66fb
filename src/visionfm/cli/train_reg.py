"""``visionfm train-reg``: biomarker regression on several feature stores (original
``train_metric_reg_multi_decoder.py``, reference §5.6; standardised targets and fusion are additions)."""

from __future__ import annotations

import argparse

from visionfm.cli.options import VFMArgumentParser, add_store_decoder_arguments, to_config


def add_arguments(p: VFMArgumentParser) -> None:
    add_store_decoder_arguments(p, epochs=500, output_dir="./results", num_labels=38,
                                num_labels_help="number of regression targets",
                                lr_help="learning rate (scaled only with --lr_scaling linear)")
    p.add_argument("--targets_json", nargs="*", default=None,
                   help="targets.json files, or data folders to search for them (target names in reports); "
                        "default: targets.json inside the store folders")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"],
                   help="adamw: betas (0.9, 0.999), wd 0.05 (the original); sgd: momentum 0.9, no weight decay")
    p.add_argument("--lr_scaling", default="none", choices=["none", "linear"],
                   help="none: the optimizer gets --lr as given (the original); linear: --lr x batch_size_per_gpu "
                        "x world / 256")
    p.add_argument("--scheduler", default="constant", choices=["constant", "cosine"],
                   help="per-epoch LR schedule: constant (the original) or cosine to 0 over --epochs")


def run(args: argparse.Namespace) -> int:
    from visionfm.config import TrainRegConfig
    from visionfm.tasks.regression import run_train_reg

    return run_train_reg(to_config(TrainRegConfig, args))
