"""``visionfm train-cls``: a classification decoder on a frozen encoder (reference §5.2)."""

from __future__ import annotations

import argparse

from visionfm.cli.options import NUM_WORKERS, VFMArgumentParser, add_amp_argument, add_arch_arguments, to_config


def add_arguments(p: VFMArgumentParser) -> None:
    p.add_argument("--name", required=True, help="run name; outputs go to <output_dir>/<name>")
    p.add_argument("--n_last_blocks", type=int, default=4, help="concatenate the CLS tokens of this many last blocks")
    p.add_argument("--avgpool_patchtokens", type=int, default=0, choices=[0, 1],
                   help="1: use the mean patch token of the last block instead of CLS tokens")
    add_arch_arguments(p)
    p.add_argument("--input_size", type=int, default=224, help="side S of the square input (multiple of 16)")
    p.add_argument("--pretrained_weights", default=None,
                   help="encoder weights file, or 'random'; required unless --features is given")
    p.add_argument("--checkpoint_key", default="teacher", help="sub-dict of the weights file holding the encoder")
    p.add_argument("--modality", default=None,
                   help="normalisation statistics (default: what the weights record; with --features, what the "
                        "stores record; else Fundus); given, it wins")
    p.add_argument("--epochs", type=int, default=100, help="training epochs")
    p.add_argument("--lr", type=float, default=0.001, help="base LR, scaled by batch_size_per_gpu*world/256")
    p.add_argument("--batch_size_per_gpu", "--batch_size", type=int, default=512,
                   help="samples per batch and process")
    p.add_argument("--data_path", default=None,
                   help="the data set (layout per --dataset_format); required unless --features is given")
    p.add_argument("--dataset_format", default="vfm", choices=["vfm", "ImageNet"],
                   help="vfm: <split>/images + labels; ImageNet: <split>/<class>/ folders")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--num_workers", type=int, default=NUM_WORKERS,
                   help="image-loading workers for the one feature pass")
    p.add_argument("--val_freq", type=int, default=1, help="validate every this many epochs (and at the last)")
    p.add_argument("--output_dir", default="./results", help="outputs go to <output_dir>/<name>")
    p.add_argument("--num_labels", type=int, default=5, help="classes (1 = binary); label count for multilabel")
    p.add_argument("--load_from", default=None,
                   help="decoder checkpoint: with --test, evaluate it on test; without, resume/initialise from it")
    p.add_argument("--test", action="store_true", help="only evaluate --load_from on the test split")
    p.add_argument("--head_type", "--head", dest="head", default="cls", choices=["cls", "linear"],
                   help="ClsHead (BN+MLP) or a linear probe")
    p.add_argument("--bn_momentum", type=float, default=0.1,
                   help="ClsHead BatchNorm momentum (0.99 reproduces the original: running stats ≈ last batch)")
    p.add_argument("--features", default=None, help="train from a 'visionfm extract' store (its --output_dir)")
    p.add_argument("--task", default="auto", choices=["auto", "binary", "multiclass", "multilabel"],
                   help="auto: from the labels (one column: binary/multiclass by --num_labels; several: multilabel)")
    p.add_argument("--class_names", nargs="+", default=None, metavar="NAME",
                   help="display names in output order (binary: negative then positive); default: a classes.txt "
                        "beside the labels or stores, the ImageFolder class folders, else the indices")
    p.add_argument("--ordinal", action="store_true",
                   help="the classes are ordered grades (e.g. DR 0-4): quadratic kappa selects the epoch, the "
                        "report adds ordinal metrics")
    add_amp_argument(p)
    p.add_run_arguments()


def run(args: argparse.Namespace) -> int:
    from visionfm.config import TrainClsConfig
    from visionfm.errors import ConfigError
    from visionfm.tasks.classification import run_train_cls

    if args.data_path is None and args.features is None:
        raise ConfigError("--data_path is required (the data set), unless --features names extracted stores")
    return run_train_cls(to_config(TrainClsConfig, args))
