"""``visionfm evaluate``: a fine-tuned checkpoint or model folder on the test split, with the standard
report (reference §5.9)."""

from __future__ import annotations

import argparse

from visionfm.cli.finetune import add_class_order_arguments
from visionfm.cli.options import VFMArgumentParser, arch_choices, bool_flag, to_config


def add_arguments(p: VFMArgumentParser) -> None:
    p.add_argument("--name", default=None,
                   help="run name; the report goes to <output_dir>/<name>/report, or <output_dir>/report without it")
    p.add_argument("--load_from", default=None,
                   help="checkpoint_best.safetensors from 'visionfm finetune', a model folder, or the original's "
                        "checkpoint_best_finetune.pth (then give --arch, --input_size, --num_labels)")
    p.add_argument("--model", default=None,
                   help="a classification model folder (e.g. <finetune run>/model); alternative to --load_from")
    p.add_argument("--data_path", required=True, help="folder with <split>/<class>/ images")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--arch", default="vit_base", choices=arch_choices(), help="original .pth checkpoints only")
    p.add_argument("--input_size", type=int, default=224, help="original .pth checkpoints only")
    p.add_argument("--patch_size", type=int, default=16, help="original .pth checkpoints only")
    p.add_argument("--num_labels", type=int, default=None, help="original .pth checkpoints only")
    p.add_argument("--checkpoint_key", default="visionfm_state_dict", help="accepted for the original's command lines")
    p.add_argument("--modality", default="Fundus", help="used when the checkpoint does not record it")
    add_class_order_arguments(p)
    p.add_argument("--batch_size_per_gpu", type=int, default=128)
    p.add_argument("--num_workers", type=int, default=10)
    p.add_argument("--amp", type=bool_flag, default=True, help="bf16 autocast on CUDA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default=".")
    p.add_run_arguments(resume=False)


def run(args: argparse.Namespace) -> int:
    from visionfm.config import EvaluateConfig
    from visionfm.tasks.finetune import run_evaluate

    return run_evaluate(to_config(EvaluateConfig, args))
