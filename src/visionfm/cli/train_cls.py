"""``visionfm train-cls``: a classification decoder on a frozen encoder (reference §5.2)."""

from __future__ import annotations

import argparse

from visionfm.cli.options import VFMArgumentParser, add_amp_argument, add_arch_arguments, to_config


def add_arguments(p: VFMArgumentParser) -> None:
    p.add_argument("--name", required=True, help="run name; outputs go to <output_dir>/<name>")
    p.add_argument("--n_last_blocks", type=int, default=4, help="concatenate the CLS tokens of this many last blocks")
    p.add_argument("--avgpool_patchtokens", type=int, default=0, choices=[0, 1],
                   help="1: use the mean patch token of the last block instead of CLS tokens")
    add_arch_arguments(p)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--pretrained_weights", default=None,
                   help="encoder weights file, or 'random'; required unless --features is given")
    p.add_argument("--checkpoint_key", default="teacher")
    p.add_argument("--modality", default=None,
                   help="normalisation statistics (default: what the weights record; with --features, what the "
                        "stores record; else Fundus); given, it wins")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.001, help="base LR, scaled by batch_size_per_gpu*world/256")
    p.add_argument("--batch_size_per_gpu", type=int, default=512)
    p.add_argument("--data_path", default="/path/to/data/")
    p.add_argument("--dataset_format", default="vfm", choices=["vfm", "ImageNet"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_workers", type=int, default=10, help="image-loading workers for the one feature pass")
    p.add_argument("--val_freq", type=int, default=1)
    p.add_argument("--output_dir", default="./results")
    p.add_argument("--num_labels", type=int, default=5, help="classes (1 = binary); label count for multilabel")
    p.add_argument("--load_from", default=None,
                   help="decoder checkpoint: with --test, evaluate it on test; without, resume/initialise from it")
    p.add_argument("--test", action="store_true", help="only evaluate --load_from on the test split")
    p.add_argument("--head", default="cls", choices=["cls", "linear"], help="ClsHead (BN+MLP) or a linear probe")
    p.add_argument("--bn_momentum", type=float, default=0.1,
                   help="ClsHead BatchNorm momentum (0.99 reproduces the original: running stats ≈ last batch)")
    p.add_argument("--features", default=None, help="train from a 'visionfm extract' store (its --dst_root)")
    p.add_argument("--task", default="auto", choices=["auto", "binary", "multiclass", "multilabel"])
    add_amp_argument(p)
    p.add_run_arguments()


def run(args: argparse.Namespace) -> int:
    from visionfm.config import TrainClsConfig
    from visionfm.tasks.classification import run_train_cls

    return run_train_cls(to_config(TrainClsConfig, args))
