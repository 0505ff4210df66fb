"""``visionfm finetune``: encoder + classification head trained end to end (reference §5.8)."""

from __future__ import annotations

import argparse

from visionfm.cli.options import VFMArgumentParser, arch_choices, bool_flag, to_config


def add_class_order_arguments(p: VFMArgumentParser) -> None:
    p.add_argument("--class_order", default=None,
                   help="comma-separated class folders in label order (default: alphabetical)")
    p.add_argument("--class_order_preset", default=None,
                   help="the original's order of a RETFound benchmark: PAPILA, Glaucoma_fundus, Retina, OCTID, "
                        "JSIEC, IDRiD, MESSIDOR2, APTOS2019")


def add_arguments(p: VFMArgumentParser) -> None:
    p.add_argument("--name", default=None,
                   help="run name; outputs go to <output_dir>/<name>, or straight into --output_dir without it "
                        "(as the original)")
    p.add_argument("--n_last_blocks", type=int, default=4, help="concatenate the CLS tokens of this many last blocks")
    p.add_argument("--avgpool_patchtokens", type=int, default=0, choices=[0, 1, 2],
                   help="0: last-n CLS concat; 1: mean patch token; 2: both")
    p.add_argument("--arch", default="vit_base", choices=arch_choices())
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--patch_size", type=int, default=16)
    p.add_argument("--pretrained_weights", default=None,
                   help="encoder weights file, a model folder (its encoder.* tensors), or 'random'")
    p.add_argument("--checkpoint_key", default="teacher")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.001,
                   help="head base LR, scaled by batch_size_per_gpu*accum_iter*world/256")
    p.add_argument("--encoder_lr_scale", type=float, default=0.1,
                   help="encoder LR = head LR x this (the original's 0.1)")
    p.add_argument("--layer_decay", type=float, default=0.75, help="layer-wise LR decay over encoder blocks (1: none)")
    p.add_argument("--min_lr", type=float, default=1e-6)
    p.add_argument("--warmup_epochs", type=int, default=0)
    p.add_argument("--weight_decay", type=float, default=0.05)
    p.add_argument("--clip_grad", type=float, default=0.0, help="global gradient-norm clip (0: off)")
    p.add_argument("--drop_path", type=float, default=0.1)
    p.add_argument("--accum_iter", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--amp", type=bool_flag, default=True, help="bf16 autocast on CUDA")
    p.add_argument("--min_crop_scale", type=float, default=0.08, help="RandomResizedCrop lower scale (original 0.08)")
    p.add_argument("--randaug", default="", help="timm RandAugment config, e.g. rand-m9-mstd0.5-inc1 (empty: off)")
    p.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0: off)")
    p.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (0: off)")
    p.add_argument("--mixup_prob", type=float, default=1.0)
    p.add_argument("--mixup_switch_prob", type=float, default=0.5)
    p.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    p.add_argument("--reprob", type=float, default=0.0, help="random-erasing probability")
    p.add_argument("--head", default="cls", choices=["cls", "linear"])
    p.add_argument("--bn_momentum", type=float, default=0.1)
    p.add_argument("--batch_size_per_gpu", type=int, default=128)
    p.add_argument("--data_path", required=True, help="folder with train/ val/ test/ <class>/ images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modality", default="Fundus")
    p.add_argument("--task", default="", help="benchmark name, informational (use --class_order_preset for orders)")
    p.add_argument("--num_workers", type=int, default=10)
    p.add_argument("--val_freq", type=int, default=1)
    p.add_argument("--output_dir", default=".")
    p.add_argument("--num_labels", type=int, default=None,
                   help="outputs; default = number of classes. 1 with two classes: one sigmoid logit (BCE)")
    p.add_argument("--load_from", default=None,
                   help="initialise encoder + head from a finetune checkpoint or a finetune model folder")
    add_class_order_arguments(p)
    p.add_run_arguments()


def run(args: argparse.Namespace) -> int:
    from visionfm.config import FinetuneConfig
    from visionfm.tasks.finetune import run_finetune

    return run_finetune(to_config(FinetuneConfig, args))
