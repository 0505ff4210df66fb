"""The ``visionfm`` entry point: a table of subcommands, each a module with ``add_arguments`` and ``run``.

Subcommand modules are imported only when chosen, so ``visionfm --help`` stays fast and one broken
optional dependency does not take down unrelated commands.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from visionfm import __version__
from visionfm.cli.options import VFMArgumentParser, check_args, parse_with_config
from visionfm.config import CONFIGS

# name -> (module, one-line help). Every module defines ``add_arguments(parser)`` and ``run(args) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("visionfm.cli.info", "show what a weights file holds and which architecture it fits"),
    "weights": ("visionfm.cli.weights",
                "the official VisionFM encoder files: list them, fetch one (verified), print its local path"),
    "datasets": ("visionfm.cli.datasets",
                 "public data sets in the vfm layouts: list them, fetch one (verified, extracted, checked), its path"),
    "export": ("visionfm.cli.export", "convert an encoder checkpoint into safetensors + JSON config"),
    "synth": ("visionfm.cli.synth", "write learnable synthetic data sets in the original layouts"),
    "pretrain": ("visionfm.cli.pretrain", "iBOT self-supervised pretraining of an encoder (per modality or mixed)"),
    "extract": ("visionfm.cli.extract", "extract frozen-encoder features into feature stores"),
    "convert-features": ("visionfm.cli.convert_features",
                         "turn the original's feature pickles into feature stores (read safely)"),
    "train-cls": ("visionfm.cli.train_cls", "train a classification decoder on a frozen encoder"),
    "train-multi-cls": ("visionfm.cli.train_multi_cls",
                        "multi-label classification on several feature stores (pooled or fused per subject)"),
    "train-reg": ("visionfm.cli.train_reg", "biomarker regression on several feature stores (pooled or fused)"),
    "train-seg": ("visionfm.cli.train_seg", "train a segmentation decoder (UNETR or linear) on a frozen encoder"),
    "train-landmark": ("visionfm.cli.train_landmark", "train a heatmap landmark decoder on a frozen encoder"),
    "predict": ("visionfm.cli.predict",
                "apply a model folder to images or DICOM files (predictions, overlays, attention)"),
    "train-forecast": ("visionfm.cli.train_forecast",
                       "glaucoma-progression forecasting (image features + interval) on a frozen encoder"),
    "finetune": ("visionfm.cli.finetune", "fine-tune encoder + classification head end to end (RETFound layout)"),
    "evaluate": ("visionfm.cli.evaluate", "evaluate a fine-tuned checkpoint on the test split and write a report"),
    "prepare": ("visionfm.cli.prepare", "store down-sized copies of a pretraining image tree (faster input pipeline)"),
    "demo": ("visionfm.cli.demo", "run the end-to-end pipeline on synthetic data and print a report"),
    "serve": ("visionfm.cli.serve", "local web app and JSON API over trained model folders (loopback by default)"),
}


def build_parser() -> tuple[VFMArgumentParser, dict[str, VFMArgumentParser]]:
    parser = VFMArgumentParser(prog="visionfm", description="Ophthalmic foundation models (VisionFM).")
    parser.add_argument("--version", action="version", version=f"visionfm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                help="one of the commands below; 'visionfm COMMAND --help' lists its flags "
                                     "and defaults")
    subparsers = {}
    for name, (_, helptext) in COMMANDS.items():
        subparsers[name] = sub.add_parser(name, help=helptext, description=helptext)
    return parser, subparsers


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    sp = subparsers[name]
    module.add_arguments(sp)
    args = parse_with_config(sp, argv[1:])
    args.command = name
    try:
        with cli_wording():  # errors name the flags (the Python API rewords them to argument names)
            if name not in CONFIGS:  # a command with a typed config is checked when run() builds it (to_config)
                check_args(name, sp, args)
            return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except VisionFMError as exc:  # user-facing error: one clear line, no traceback
        print(f"visionfm {name}: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2


from visionfm.errors import VisionFMError, cli_wording  # noqa: E402  (after main() for a cheap import graph)

if __name__ == "__main__":
    sys.exit(main())
