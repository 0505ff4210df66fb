"""``visionfm weights {list,path,fetch}``: the official VisionFM encoder files (:mod:`visionfm.models.weights`).

``list`` shows every file (architecture, key, licence, whether it is here and where); ``path NAME`` prints
the verified local file, or exits 2 with one line saying what to download from where into which path;
``fetch NAME [--url URL]`` downloads it (Google Drive via gdown, or ``--url``), verifies it by loading and
records its sha256. ``NAME`` is a modality (``Fundus``, ``slit-lamp``... case-insensitive).
"""

from __future__ import annotations

import argparse
import json

from visionfm.cli.options import add_catalogue_arguments, check_catalogue_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_catalogue_arguments(
        parser,
        actions_help="list: the official files; path NAME: the local file; fetch NAME: download it",
        name_help="a modality name (Fundus, OCT, FFA, Ultrasound, External, SlitLamp, MRI, UBM)",
        url_help="fetch: download from this http(s) URL instead of the entry's Google Drive file",
        json_help="list: print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from visionfm.models.weights import fetch_weights, weights_dir, weights_path, weights_table

    check_catalogue_arguments("weights", args, "a modality, e.g. Fundus")
    if args.action == "list":
        rows = weights_table()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"weights folder: {weights_dir()}  (set VISIONFM_HOME to move it)")
        head = ("name", "file", "arch", "key", "licence", "present", "size_mb", "path / source")
        table = [head] + [
            (r["name"], r["file"], f"{r['arch']}/{r['patch_size']}", r["checkpoint_key"], r["licence"],
             "yes" if r["present"] else "no", f"{r['size'] / 2**20:.1f}" if r["size"] else "-",
             r["path"] if r["present"] else r["source"]) for r in rows]
        widths = [max(len(str(row[i])) for row in table) for i in range(len(head) - 1)]
        for row in table:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + str(row[-1]))
        return 0
    if args.action == "path":
        print(weights_path(args.name))
        return 0
    print(fetch_weights(args.name, url=args.url))
    return 0
