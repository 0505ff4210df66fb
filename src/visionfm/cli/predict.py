"""``visionfm predict``: apply a model folder to images / DICOM files (see docs/inference.md)."""

from __future__ import annotations

from visionfm.cli.options import VFMArgumentParser, add_device_argument


def add_arguments(p: VFMArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a model folder (config.json + model.safetensors), e.g. <run>/model, or a Hub id")
    p.add_argument("--input", required=True, help="an image / DICOM file, or a folder of them (searched recursively)")
    p.add_argument("--output_dir", "--output", dest="output", default="./predictions",
                   metavar="OUTPUT_DIR",
                   help="folder for predictions.csv/json and the PNGs")
    p.add_argument("--days", type=float, nargs="+", default=None,
                   help="forecasting models only: horizon(s) in days (one prediction per image and horizon)")
    p.add_argument("--batch_size_per_gpu", "--batch_size", dest="batch_size", type=int, default=8,
                   metavar="BATCH_SIZE_PER_GPU", help="images per forward pass")
    add_device_argument(p)
    p.add_argument("--no_attention", action="store_true", help="do not write attention-map PNGs")
    p.add_argument("--attention_method", default="last", choices=["last", "rollout"],  # ATTENTION_METHODS
                   help="attention/<name>.png: 'last' = the last block's CLS-to-patch attention, mean over heads; "
                        "'rollout' = attention rollout over all blocks (default: last)")
    p.add_argument("--no_overlays", action="store_true", help="do not write segmentation / landmark overlays")
    p.add_argument("--on_corrupt", "--on_error", dest="on_error", default=None, choices=["skip", "fail"],
                   help="an unreadable input file: 'skip' it (listed in predictions.csv with the reason) or 'fail' "
                        "at once (default: skip for a folder, fail for a single file)")
    p.add_config_argument()


def run(args) -> int:
    import json

    from visionfm.engine.logging import setup_logging
    from visionfm.inference.predictor import run_predict

    setup_logging(True)
    summary = run_predict(args.model, args.input, args.output, days=args.days, batch_size=args.batch_size,
                          device=args.device, attention=not args.no_attention, overlays=not args.no_overlays,
                          on_error=args.on_error, attention_method=args.attention_method)
    from pathlib import Path

    from visionfm.reports.summary import format_summary

    out = Path(args.output)
    skipped = summary.get("n_skipped") or 0
    print(format_summary("predict", None, task=str(summary.get("task_kind") or summary.get("task") or ""),
                         notes=[f"{summary.get('n_images')} image(s), {summary.get('n_records')} prediction(s)"
                                + (f", {skipped} unreadable file(s) skipped (listed in predictions.csv)"
                                   if skipped else "")],
                         paths={"table": out / "predictions.csv", "records": out / "predictions.json"}))
    print(json.dumps(summary))  # the machine-readable run summary, last
    return 0
