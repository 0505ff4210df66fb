"""``visionfm evaluate``: a fine-tuned checkpoint or model folder on the test split, with the standard
report (reference §5.9)."""

from __future__ import annotations

import argparse

from visionfm.cli.finetune import add_class_order_arguments, add_original_info_arguments, add_pooling_arguments
from visionfm.cli.options import NUM_WORKERS, VFMArgumentParser, arch_choices, bool_flag, to_config


def add_arguments(p: VFMArgumentParser) -> None:
    p.add_argument("--name", default=None,
                   help="run name; outputs go to <output_dir>/<name>, or straight into --output_dir without it "
                        "(as the original)")
    p.add_argument("--pretrained_weights", "--load_from", dest="load_from", default=None, metavar="CHECKPOINT",
                   help="the fine-tuned model: the original's checkpoint_best_finetune.pth (ours or the "
                        "original's), checkpoint_best.safetensors of 'visionfm finetune', or a model folder")
    p.add_argument("--model", default=None,
                   help="a classification model folder (e.g. <finetune run>/model); alternative to "
                        "--pretrained_weights")
    p.add_argument("--data_path", required=True, help="folder with <split>/<class>/ images")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split of --data_path to evaluate")
    p.add_argument("--arch", default=None, choices=arch_choices(),
                   help="original .pth checkpoints: default read from the file; given: checked")
    p.add_argument("--input_size", type=int, default=224, help="used when the checkpoint does not record it")
    p.add_argument("--patch_size", type=int, default=None,
                   help="original .pth checkpoints: default read from the file; given: checked")
    add_pooling_arguments(p)
    p.add_argument("--num_labels", type=int, default=None,
                   help="outputs; read from the checkpoint, checked when given")
    p.add_argument("--checkpoint_key", default="visionfm_state_dict",
                   help="encoder key of an original .pth checkpoint")
    p.add_argument("--modality", default="Fundus", help="used when the checkpoint does not record it")
    add_original_info_arguments(p)
    add_class_order_arguments(p)
    p.add_argument("--batch_size_per_gpu", "--batch_size", type=int, default=128, help="images per batch and process")
    p.add_argument("--num_workers", type=int, default=NUM_WORKERS, help="image-loading workers per process")
    p.add_argument("--amp", type=bool_flag, default=False, help="bf16 autocast on CUDA (the original: fp32)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--output_dir", default=".",
                   help="outputs go to <output_dir>/<name>, or <output_dir> without --name")
    p.add_run_arguments(resume=False)


def run(args: argparse.Namespace) -> int:
    from visionfm.config import EvaluateConfig
    from visionfm.tasks.finetune import run_evaluate

    return run_evaluate(to_config(EvaluateConfig, args))
