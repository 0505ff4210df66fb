"""``visionfm export``: an encoder checkpoint → ``OUT.safetensors`` + ``OUT.json``."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", "--pretrained_weights", dest="weights", required=True, help="input checkpoint")
    parser.add_argument("--arch", default=None, help="vit_tiny/small/base/large (default: inferred from the file)")
    parser.add_argument("--checkpoint_key", default="teacher", help="sub-dict holding the encoder")
    parser.add_argument("--patch_size", type=int, default=None, help="expected patch size (default: from the file)")
    parser.add_argument("--modality", default=None, help="modality recorded in the config (optional)")
    parser.add_argument("--out", required=True, help="output path ending in .safetensors")


def run(args: argparse.Namespace) -> int:
    from visionfm.models.export import export_encoder

    cfg = export_encoder(args.weights, args.out, args.arch, args.checkpoint_key, args.patch_size, args.modality)
    print(f"wrote {args.out} ({cfg['arch']}/{cfg['patch_size']}, native {cfg['img_size']} px) and its .json config")
    return 0
