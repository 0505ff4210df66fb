"""``visionfm export``: an encoder checkpoint → ``OUT.safetensors`` + ``OUT.json``, or a timm/Hub folder ``OUT/``."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrained_weights", "--weights", dest="weights", required=True,
                        help="input checkpoint")
    parser.add_argument("--arch", default=None, help="vit_tiny/small/base/large (default: inferred from the file)")
    parser.add_argument("--checkpoint_key", default="teacher", help="sub-dict holding the encoder")
    parser.add_argument("--patch_size", type=int, default=None, help="expected patch size (default: from the file)")
    parser.add_argument("--modality", default=None, help="modality recorded in the config (optional)")
    parser.add_argument("--out", required=True,
                        help="output: a path ending in .safetensors (+ .json config next to it), or a folder (no "
                             "suffix) for config.json + model.safetensors + README.md that timm loads as "
                             "local-dir:FOLDER and the Hugging Face Hub renders")


def run(args: argparse.Namespace) -> int:
    from visionfm.models.export import export_encoder

    cfg = export_encoder(args.weights, args.out, args.arch, args.checkpoint_key, args.patch_size, args.modality)
    what = "config.json, model.safetensors, README.md" if not str(args.out).endswith(".safetensors") else \
        "its .json config"
    print(f"wrote {args.out} ({cfg['arch']}/{cfg['patch_size']}, native {cfg['img_size']} px): {what}")
    return 0
