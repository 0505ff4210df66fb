"""``visionfm predict``: apply a model folder to images / DICOM files (see docs/inference.md)."""

from __future__ import annotations

from visionfm.cli.options import VFMArgumentParser


def add_arguments(p: VFMArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a model folder (config.json + model.safetensors), e.g. <run>/model, or a Hub id")
    p.add_argument("--input", required=True, help="an image / DICOM file, or a folder of them (searched recursively)")
    p.add_argument("--output", default="./predictions", help="folder for predictions.csv/json and the PNGs")
    p.add_argument("--days", type=float, nargs="+", default=None,
                   help="forecasting models only: horizon(s) in days (one prediction per image and horizon)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no_attention", action="store_true", help="do not write attention-map PNGs")
    p.add_argument("--no_overlays", action="store_true", help="do not write segmentation / landmark overlays")
    p.add_argument("--on_error", default=None, choices=["skip", "fail"],
                   help="an unreadable input file: 'skip' it (listed in predictions.csv with the reason; the default "
                        "for a folder) or 'fail' at once (the default for a single file)")
    p.add_config_argument()


def run(args) -> int:
    import json

    from visionfm.engine.logging import setup_logging
    from visionfm.inference.predictor import run_predict

    setup_logging(True)
    summary = run_predict(args.model, args.input, args.output, days=args.days, batch_size=args.batch_size,
                          device=args.device, attention=not args.no_attention, overlays=not args.no_overlays,
                          on_error=args.on_error)
    print(json.dumps(summary))
    return 0
