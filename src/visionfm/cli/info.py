"""``visionfm info WEIGHTS``: what a weights file holds, without running anything from it."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", help="a .pth/.pt/.safetensors file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    from visionfm.models.export import format_info, inspect_weights

    info = inspect_weights(args.weights)
    print(json.dumps(info, indent=2, default=str) if args.json else format_info(info))
    return 0
