"""``visionfm datasets {list,path,fetch}``: public data sets in the vfm layouts (:mod:`visionfm.data.fetch`).

``list`` shows every archive (source, whether it is downloaded and extracted, where); ``path NAME`` prints the
extracted folder after checking its layouts, or exits 2 with one line saying how to get it; ``fetch NAME
[--url URL]`` downloads the archive (Google Drive via gdown, or ``--url``), checks its sha256, extracts it
safely and reports which data sets were found and any layout problem, one line each.
"""

from __future__ import annotations

import argparse
import json

from visionfm.cli.options import add_catalogue_arguments, check_catalogue_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_catalogue_arguments(
        parser,
        actions_help="list: the known archives; path NAME: the extracted folder; fetch NAME: download, extract and "
                     "check it",
        name_help="a data set name (visionfm-processed: IDRiD, OCTID, DRIVE preprocessed by the authors)",
        url_help="fetch: download the archive from this http(s) URL instead of its Google Drive file",
        json_help="print JSON instead of text (list: the table; path/fetch: the report)")


def run(args: argparse.Namespace) -> int:
    from visionfm.data.fetch import dataset_path, datasets_dir, datasets_table, fetch_dataset

    check_catalogue_arguments("datasets", args, "e.g. visionfm-processed")
    if args.action == "list":
        rows = datasets_table()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"datasets folder: {datasets_dir()}  (set VISIONFM_HOME to move it)")
        for r in rows:
            state = "extracted" if r["extracted"] else ("downloaded" if r["downloaded"] else "not downloaded")
            print(f"{r['name']}  {state}  {r['path'] if r['extracted'] else r['source']}")
            print(f"    {r['description']}; licence: {r['licence']}")
        return 0
    if args.action == "path":
        report = dataset_path(args.name)
    else:
        report = fetch_dataset(args.name, url=args.url)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    for line in report.lines():
        print(line)
    print(report.path)
    return 0
