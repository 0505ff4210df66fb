"""``visionfm finetune``: encoder + classification head trained end to end (reference §5.8)."""

from __future__ import annotations

import argparse

from visionfm.cli.options import NUM_WORKERS, VFMArgumentParser, arch_choices, bool_flag, to_config

RECIPE_HELP = " (default: from --recipe)"


def add_class_order_arguments(p: VFMArgumentParser, recipe: bool = False) -> None:
    p.add_argument("--class_order", default=None,
                   help="comma-separated class folders in label order (default: alphabetical)")
    p.add_argument("--class_order_preset", default=None,
                   help="the original's order of a RETFound benchmark (PAPILA, Glaucoma_fundus, Retina, OCTID, "
                        "JSIEC, IDRiD, MESSIDOR2, APTOS2019); 'auto': that order when the data folder's name or "
                        "--task names the benchmark, else alphabetical; 'alphabetical'"
                        + (RECIPE_HELP if recipe else " (default: alphabetical)"))


def add_pooling_arguments(p: VFMArgumentParser) -> None:
    p.add_argument("--n_last_blocks", type=int, default=4, help="concatenate the CLS tokens of this many last blocks")
    p.add_argument("--avgpool_patchtokens", type=int, default=0, choices=[0, 1, 2],
                   help="0: last-n CLS concat; 1: mean patch token; 2: both")


def add_original_info_arguments(p: VFMArgumentParser) -> None:
    p.add_argument("--task", default="", help="benchmark/run label, printed (as the original); with "
                                              "--class_order_preset auto it may name the benchmark")
    p.add_argument("--extra", default="", help="accepted for the original's command lines; unused (as there)")


def add_arguments(p: VFMArgumentParser) -> None:
    p.add_argument("--name", default=None,
                   help="run name; outputs go to <output_dir>/<name>, or straight into --output_dir without it "
                        "(as the original)")
    p.add_argument("--recipe", default="visionfm", choices=["visionfm", "retfound"],
                   help="visionfm: the original script's recipe; retfound: RETFound's (layer decay, drop path, "
                        "RandAugment, random erasing, smoothing, warm-up, bf16). Flags given explicitly win")
    add_pooling_arguments(p)
    p.add_argument("--arch", default=None, choices=arch_choices(),
                   help="default: read from the weights file (vit_base for random weights); given: checked")
    p.add_argument("--input_size", type=int, default=224, help="side S of the square input (multiple of 16)")
    p.add_argument("--patch_size", type=int, default=None,
                   help="default: read from the weights file (16 for random weights); given: checked")
    p.add_argument("--pretrained_weights", default=None,
                   help="encoder weights file, a model folder (its encoder.* tensors), or 'random'")
    p.add_argument("--checkpoint_key", default="teacher", help="sub-dict of the weights file holding the encoder")
    p.add_argument("--epochs", type=int, default=100, help="training epochs")
    p.add_argument("--lr", type=float, default=0.001,
                   help="head base LR, scaled by batch_size_per_gpu*accum_iter*world/256")
    p.add_argument("--encoder_lr_scale", type=float, default=0.1,
                   help="encoder LR = head LR x this (the original's 0.1)")
    p.add_argument("--layer_decay", type=float, default=None,
                   help="layer-wise LR decay over encoder blocks (1: none)" + RECIPE_HELP)
    p.add_argument("--weight_decay_all", type=bool_flag, default=None,
                   help="weight decay also on biases, norms, tokens and position embedding" + RECIPE_HELP)
    p.add_argument("--scheduler", default=None, choices=["cosine", "warmup_cosine"],
                   help="cosine: CosineAnnealingLR(epochs) stepped per epoch; warmup_cosine: per-iteration linear "
                        "warm-up then cosine to --min_lr" + RECIPE_HELP)
    p.add_argument("--min_lr", type=float, default=None, help="final LR of warmup_cosine" + RECIPE_HELP)
    p.add_argument("--warmup_epochs", type=float, default=None, help="warm-up of warmup_cosine" + RECIPE_HELP)
    p.add_argument("--weight_decay", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--clip_grad", type=float, default=0.0, help="global gradient-norm clip (0: off)")
    p.add_argument("--drop_path", type=float, default=None, help="stochastic depth rate" + RECIPE_HELP)
    p.add_argument("--accum_iter", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--amp", type=bool_flag, default=None, help="bf16 autocast on CUDA" + RECIPE_HELP)
    p.add_argument("--min_crop_scale", type=float, default=0.08, help="RandomResizedCrop lower scale (original 0.08)")
    p.add_argument("--crop_interpolation", default=None, choices=["bilinear", "bicubic"],
                   help="RandomResizedCrop interpolation" + RECIPE_HELP)
    p.add_argument("--randaug", default=None,
                   help="timm RandAugment config, e.g. rand-m9-mstd0.5-inc1 (empty: off)" + RECIPE_HELP)
    p.add_argument("--mixup", type=float, default=None, help="mixup alpha (0: off)" + RECIPE_HELP)
    p.add_argument("--cutmix", type=float, default=None, help="cutmix alpha (0: off)" + RECIPE_HELP)
    p.add_argument("--mixup_prob", type=float, default=1.0, help="probability of mixup or cutmix per batch")
    p.add_argument("--mixup_switch_prob", type=float, default=0.5,
                   help="probability of cutmix instead of mixup when both are on")
    p.add_argument("--smoothing", type=float, default=None, help="label smoothing" + RECIPE_HELP)
    p.add_argument("--reprob", type=float, default=None, help="random-erasing probability" + RECIPE_HELP)
    p.add_argument("--head_type", "--head", dest="head", default="cls", choices=["cls", "linear"],
                   help="ClsHead (BN+MLP) or a linear layer on the pooled features")
    p.add_argument("--bn_momentum", type=float, default=0.1, help="head BatchNorm momentum (0.99: the original)")
    p.add_argument("--batch_size_per_gpu", "--batch_size", type=int, default=128,
                   help="images per batch and process")
    p.add_argument("--drop_last", type=bool_flag, default=None,
                   help="drop the last incomplete training batch of each epoch (a batch of one sample is always "
                        "dropped: BatchNorm cannot train on it)" + RECIPE_HELP)
    p.add_argument("--data_path", required=True, help="folder with train/ val/ test/ <class>/ images")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--modality", default="Fundus", help="normalisation statistics of the images")
    add_original_info_arguments(p)
    p.add_argument("--num_workers", type=int, default=NUM_WORKERS, help="image-loading workers per process")
    p.add_argument("--val_freq", type=int, default=1, help="validate every this many epochs (and at the last)")
    p.add_argument("--output_dir", default=".",
                   help="outputs go to <output_dir>/<name>, or <output_dir> without --name")
    p.add_argument("--num_labels", type=int, default=None,
                   help="outputs; default = number of classes. 1 with two classes: one sigmoid logit (BCE)")
    p.add_argument("--load_from", default=None,
                   help="initialise encoder + head from a finetune checkpoint or a finetune model folder")
    add_class_order_arguments(p, recipe=True)
    p.add_run_arguments()


def run(args: argparse.Namespace) -> int:
    from visionfm.config import FinetuneConfig
    from visionfm.tasks.finetune import run_finetune

    return run_finetune(to_config(FinetuneConfig, args))
