"""``visionfm convert-features SRC DST``: the original's feature pickles (reference §2.9) → feature stores.

``SRC`` is one ``--dst_root`` of ``extract_features.py``; ``DST`` gets the layout of ``visionfm extract``
(see :mod:`visionfm.data.convert_features`). Every pickle is read with a restricted unpickler.
"""

from __future__ import annotations

import argparse
import logging

from visionfm.cli.options import bool_flag

log = logging.getLogger("visionfm.convert_features")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC",
                        help="an extract_features.py --dst_root: SRC/<dataset>/<split>/<stem>_<epoch>.pickle")
    parser.add_argument("dst", metavar="DST",
                        help="store tree to create (as 'visionfm extract --dst_root DST' writes); then train with "
                             "--data_path <parent of DST> --datasets <name of DST>")
    parser.add_argument("--modality", default=None,
                        help="modality of the images, recorded in the stores (default: none recorded; the "
                             "pickles do not say)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    parser.add_argument("--progress", type=bool_flag, default=True, help="show a progress bar")


def run(args: argparse.Namespace) -> int:
    from visionfm.data.convert_features import convert_original_features

    s = convert_original_features(args.src, args.dst, modality=args.modality, overwrite=bool(args.overwrite),
                                  progress=bool(args.progress))
    per_split: dict[str, list[int]] = {}
    for st in s.stores:
        per_split.setdefault(st["split"], []).append(st["n_samples"])
    splits = ", ".join(f"{k}: {len(v)} stores, {sum(v)} rows" for k, v in sorted(per_split.items()))
    print(f"{s.n_files} feature files -> {len(s.stores)} stores in {s.dst} (D={s.embed_dim}, "
          f"{s.n_labels} labels, blocks {s.feats_idx}, arch {s.arch or 'unknown'}; {splits})")
    return 0
