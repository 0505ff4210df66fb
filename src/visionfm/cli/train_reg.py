"""``visionfm train-reg``: biomarker regression on several feature stores (original
``train_metric_reg_multi_decoder.py``, reference §5.6; standardised targets and fusion are additions)."""

from __future__ import annotations

from visionfm.cli.options import VFMArgumentParser


def add_arguments(p: VFMArgumentParser) -> None:
    p.add_argument("--name", required=True, help="run name; outputs go to <output_dir>/<name>")
    p.add_argument("--epochs", type=int, default=500)
    p.add_argument("--lr", type=float, default=0.001, help="base LR, scaled by batch_size_per_gpu*world/256")
    p.add_argument("--batch_size_per_gpu", type=int, default=128)
    p.add_argument("--data_path", default="/path/to/data/", help="folder holding the feature-store folders")
    p.add_argument("--datasets", nargs="+", required=True,
                   help="feature-store folders under --data_path (each the --dst_root of one 'visionfm extract')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_workers", type=int, default=4, help="kept for compatibility: features are in memory")
    p.add_argument("--val_freq", type=int, default=1)
    p.add_argument("--output_dir", default="./results")
    p.add_argument("--num_labels", type=int, default=38, help="number of regression targets")
    p.add_argument("--load_from", default=None,
                   help="decoder checkpoint: with --test, evaluate it; without, resume/initialise from it")
    p.add_argument("--test", action="store_true", help="only evaluate --load_from on the test split")
    p.add_argument("--embed_dim", type=int, default=768, help="encoder width D (head input 4·D)")
    p.add_argument("--fusion", default="pooled", choices=["pooled", "concat", "attention"],
                   help="pooled: every image is a sample (the original); concat/attention: one sample per subject")
    p.add_argument("--subject_map", default=None, help="CSV path,subject mapping images to subjects (for fusion)")
    p.add_argument("--targets_json", nargs="*", default=None,
                   help="targets.json files, or data folders to search for them (target names in reports); "
                        "default: targets.json inside the store folders")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"],
                   help="adamw: wd 0.05 with a cosine schedule (the original used a constant LR); sgd: momentum 0.9")
    p.add_argument("--bn_momentum", type=float, default=0.1, help="head BatchNorm momentum (0.99: the original)")
    p.add_argument("--report_n_boot", type=int, default=1000, help="bootstrap resamples for report CIs (0: none)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_distributed_arguments()
    p.add_config_argument()


def run(args) -> int:
    from visionfm.tasks.regression import run_train_reg

    return run_train_reg(args)
