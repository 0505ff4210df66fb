"""``visionfm train-multi-cls``: multi-label / multi-task classification on several feature stores
(original ``train_cls_multi_decoder.py``, reference §5.3; fusion per subject is an addition)."""

from __future__ import annotations

import argparse

from visionfm.cli.options import VFMArgumentParser, add_store_decoder_arguments, to_config


def add_arguments(p: VFMArgumentParser) -> None:
    add_store_decoder_arguments(p, epochs=100, output_dir=".", num_labels=13)
    p.add_argument("--label_layout", default="visionfm13", choices=["visionfm13", "multilabel"],
                   help="visionfm13: the original 13-label DR-grade + 8 findings layout and loss; "
                        "multilabel: any number of 0/1 labels with BCE")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"],
                   help="sgd: momentum 0.9, no weight decay, constant LR (the original); adamw: wd 0.05, cosine")


def run(args: argparse.Namespace) -> int:
    from visionfm.config import TrainMultiClsConfig
    from visionfm.tasks.multilabel import run_train_multi_cls

    return run_train_multi_cls(to_config(TrainMultiClsConfig, args))
