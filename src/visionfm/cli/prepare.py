"""``visionfm prepare``: store down-sized copies of a pretraining tree once, so each epoch decodes small images.

``visionfm prepare --data_path SRC --output_dir DST`` (alias ``--dst_path``) then
``visionfm pretrain --data_path DST``; see
:mod:`visionfm.data.prepare` for the size rule, the output layout and resuming.
"""

from __future__ import annotations

import argparse
import os

from visionfm.cli.options import bool_flag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_config_argument()  # type: ignore[attr-defined]
    parser.add_argument("--data_path", required=True, help="pretraining root: one folder per modality (any spelling)")
    parser.add_argument("--output_dir", "--dst_path", dest="dst_path", required=True, metavar="DST",
                        help="output root; gets DST/<CanonicalModality>/... and DST/prepare.json")
    parser.add_argument("--modality", default="all", help="comma list of modalities (e.g. Fundus,OCT) or 'all'")
    parser.add_argument("--short_side", type=int, default=None,
                      help="shorter output side in px (default 448 = 2 x 224 when --max_side is not given: "
                           "every 224-px global crop at scale >= 0.32 is still down-sampled)")
    parser.add_argument("--max_side", type=int, default=None,
                        help="longer output side in px, instead of --short_side (the two are exclusive)")
    parser.add_argument("--format", default="jpeg", choices=["jpeg", "png", "webp", "shards"],
                        help="output encoding; 'shards': JPEGs packed as tar shards in the WebDataset layout "
                             "(DST/shard-*.tar + DST/shards.json; pretrain --data_path DST/shards.json)")
    parser.add_argument("--shard_size", default="1GB",
                        help="--format shards: image bytes per shard, e.g. 1GB, 500MB, 64MiB")
    parser.add_argument("--quality", type=int, default=95, help="JPEG / WebP quality (1-100)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo every image (default: skip outputs newer than their source)")
    parser.add_argument("--on_corrupt", default="skip", choices=["fail", "skip"],
                        help="an undecodable source: skip (report and count it) or fail (stop)")
    parser.add_argument("--progress", type=bool_flag, default=True, help="show a progress bar")


def _megapixels(pixels: float | None) -> str:
    return "n/a" if pixels is None else f"{pixels / 1e6:.3f} MP"


def run(args: argparse.Namespace) -> int:
    from visionfm.data.prepare import prepare_images, prepare_shards

    options = dict(short_side=args.short_side, max_side=args.max_side, quality=args.quality, workers=args.workers,
                   overwrite=bool(args.overwrite), on_corrupt=args.on_corrupt, progress=bool(args.progress))
    if args.format == "shards":
        summary = prepare_shards(args.data_path, args.dst_path, args.modality, shard_size=args.shard_size, **options)
    else:
        summary = prepare_images(args.data_path, args.dst_path, args.modality, format=args.format, **options)
    total = summary["total"]
    for modality, c in summary["counts"].items():
        print(f"  {modality:<12} {c['found']:>8} found  {c['written']:>8} written  "
              f"{c['up_to_date']:>8} up to date  {c['corrupt']:>6} corrupt")
    if summary["empty_modalities"]:
        print(f"  folders without images (left out): {', '.join(summary['empty_modalities'])}")
    rate = summary["images_per_second"]
    print(f"prepared {total['written']} of {total['found']} images ({total['up_to_date']} already up to date, "
          f"{total['corrupt']} corrupt) in {summary['seconds']:.1f} s"
          + (f", {rate:.1f} images/s" if rate is not None else ""))
    src_px, out_px = summary["mean_source_pixels"], summary["mean_output_pixels"]
    if src_px and out_px:
        print(f"mean pixels per image: source {_megapixels(src_px)} -> output {_megapixels(out_px)} "
              f"({src_px / out_px:.1f}x fewer)")
    for item in summary["corrupt_files"][:20]:
        print(f"  corrupt: {item['path']} ({item['error']})")
    if len(summary["corrupt_files"]) > 20:
        print(f"  ... and {len(summary['corrupt_files']) - 20} more, listed in prepare.json")
    shards = summary.get("shards")
    if shards:
        print(f"{shards['n_images']} images in {shards['n_shards']} shard(s); index {shards['index']}; "
              f"pretrain with --data_path {shards['index']}")
    else:
        print(f"summary: {os.path.join(summary['destination'], 'prepare.json')}; "
              f"pretrain with --data_path {summary['destination']}")
    return 0
