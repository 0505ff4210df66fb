"""``visionfm train-forecast``: glaucoma-progression forecasting on a frozen encoder (reference §5.7)."""

from __future__ import annotations

import argparse

from visionfm.cli.options import (
    NUM_WORKERS,
    VFMArgumentParser,
    add_amp_argument,
    add_arch_arguments,
    add_modality_argument,
    bool_flag,
    to_config,
)


def add_arguments(p: VFMArgumentParser) -> None:
    p.add_argument("--name", default=None,
                   help="run name; outputs go to <output_dir>/<name>, or straight into --output_dir without it "
                        "(as the original)")
    p.add_argument("--n_last_blocks", type=int, default=4, help="concatenate the CLS tokens of this many last blocks")
    p.add_argument("--avgpool_patchtokens", type=int, default=0, choices=[0, 1, 2],
                   help="0: last-n CLS concat; 1: mean patch token; 2: both")
    p.add_argument("--epochs", type=int, default=500, help="training epochs")
    p.add_argument("--lr", type=float, default=0.001, help="learning rate (not batch-scaled, as the original)")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"], help="sgd (momentum 0.9) as the original")
    p.add_argument("--weight_decay", type=float, default=0.0, help="weight decay (the original: none)")
    p.add_argument("--batch_size_per_gpu", "--batch_size", type=int, default=128, help="samples per batch and process")
    p.add_argument("--data_path", required=True,
                   help="folder with training.txt / test.txt (or *_labels.txt), optional val.txt; "
                        "lines 'path, label, days'")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--num_workers", type=int, default=NUM_WORKERS,
                   help="image-loading workers for the one feature pass")
    p.add_argument("--val_freq", type=int, default=1, help="validate every this many epochs (and at the last)")
    p.add_argument("--output_dir", default=".",
                   help="outputs go to <output_dir>/<name>, or <output_dir> without --name")
    p.add_argument("--num_labels", type=int, default=1,
                   help="unused, as in the original: the head has one progression logit (any value is accepted)")
    p.add_argument("--load_from", default=None, help="forecast checkpoint to resume / initialise from")
    p.add_argument("--embed_dim", type=int, default=None,
                   help="encoder width D (default: the loaded encoder's; checked when given)")
    add_modality_argument(p)
    p.add_argument("--pos_weight", type=float, default=10.0, help="BCE weight of the positive (progression) class")
    p.add_argument("--max_len", type=int, default=6500,
                   help="largest interval + 1, in days; longer intervals are rejected")
    add_arch_arguments(p)
    p.add_argument("--input_size", type=int, default=224, help="side S of the square input (multiple of 16)")
    p.add_argument("--pretrained_weights", default=None,
                   help="encoder weights file, a model folder (its encoder.* tensors), or 'random'")
    p.add_argument("--checkpoint_key", default="teacher", help="sub-dict of the weights file holding the encoder")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold for F1")
    p.add_argument("--specificity", type=float, default=0.9, help="report sensitivity at this specificity")
    p.add_argument("--interval_buckets", default="365,1095",
                   help="day edges of the time-stratified results (default <1y, 1-3y, >=3y)")
    p.add_argument("--selection", default="auroc", choices=["auroc", "aupr", "f1"],
                   help="validation metric choosing the best epoch")
    p.add_argument("--standardize", type=bool_flag, default=True,
                   help="standardise features with training-set mean/std (stored in the checkpoint)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout before the final linear layer")
    p.add_argument("--scheduler", default="cosine", choices=["cosine", "constant"],
                   help="per-epoch LR schedule ('constant': the original's intent, SGD without a scheduler)")
    add_amp_argument(p)
    p.add_run_arguments()


def run(args: argparse.Namespace) -> int:
    from visionfm.config import TrainForecastConfig
    from visionfm.tasks.forecasting import run_train_forecast

    return run_train_forecast(to_config(TrainForecastConfig, args))
