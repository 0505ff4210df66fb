"""``visionfm demo``: the whole pipeline on embedded synthetic data, on CPU, in a few minutes.

synthetic data → brief iBOT pretraining of a tiny encoder → ``extract`` (feature stores) →
``train-cls`` (frozen-encoder decoder, selection on val) → evaluation report. Every step is the
same library call the commands make; the summary ends with where the report is. A second demo into
the same folder replaces the first one's runs (``--overwrite``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output_dir", default="demo_output", help="everything the demo writes goes here")
    parser.add_argument("--img_size", type=int, default=64, help="synthetic image side")
    parser.add_argument("--num", type=int, default=192, help="classification images per split")
    parser.add_argument("--pretrain_epochs", type=int, default=4, help="iBOT pretraining epochs")
    parser.add_argument("--decoder_epochs", type=int, default=40, help="classification-decoder epochs")
    parser.add_argument("--seg_epochs", type=int, default=8, help="segmentation-decoder epochs")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def run(args: argparse.Namespace) -> int:
    from visionfm.cli.main import main as cli
    from visionfm.data.synth import generate
    from visionfm.io.atomic import save_json_atomic

    out = Path(args.output_dir).resolve()
    data = out / "data"
    t0 = time.perf_counter()

    def mark(label: str) -> None:
        print(f"\n[demo {time.perf_counter() - t0:6.1f}s] {label}", flush=True)

    def step(argv: list[str], what: str) -> None:
        code = cli(argv)
        if code != 0:
            raise SystemExit(f"demo: {what} failed (exit code {code})")

    size = str(args.img_size)
    mark("1/5 writing synthetic data: 8 pretraining modalities, 5-grade fundus DR classification, vessel masks")
    generate("pretrain", data / "pretrain", num=args.num, img_size=args.img_size, seed=args.seed)
    generate("single_cls", data, num=args.num, img_size=args.img_size, seed=args.seed + 1)
    generate("segmentation", data, num=32, img_size=args.img_size, seed=args.seed + 2, num_classes=2)

    mark("2/5 iBOT pretraining of a vit_tiny encoder on the synthetic fundus images")
    run_name = "pretrain_fundus"
    step(["pretrain", "--data_path", str(data / "pretrain"), "--modality", "Fundus", "--arch", "vit_tiny",
          "--input_size", size, "--batch_size_per_gpu", "32", "--epochs", str(args.pretrain_epochs),
          "--warmup_epochs", "1", "--warmup_teacher_temp_epochs", "1", "--lr", "2e-3", "--out_dim", "1024",
          "--patch_out_dim", "1024", "--num_workers", "2", "--saveckp_freq", "1000", "--name", run_name,
          "--output_dir", str(out), "--seed", str(args.seed), "--no_progress", "--overwrite"], "pretraining")
    ckpt = out / run_name / "checkpoint.pth"

    mark("3/5 extracting frozen features (CLS of the last 4 blocks) with the pretrained teacher")
    stores = out / "features"
    step(["extract", "--pretrained_weights", str(ckpt), "--checkpoint_key", "teacher", "--arch", "vit_tiny",
          "--modality", "Fundus", "--data_path", str(data / "FundusClassification"), "--dst_root", str(stores),
          "--input_size", size, "--batch_size_per_gpu", "64", "--epochs", "2", "--num_workers", "0",
          "--seed", str(args.seed)], "feature extraction")

    mark("4/5 training the classification decoder on the stored features, then evaluating on test")
    cls_name = "dr_grading"
    step(["train-cls", "--name", cls_name, "--features", str(stores), "--num_labels", "5", "--modality", "Fundus",
          "--epochs", str(args.decoder_epochs), "--batch_size_per_gpu", "64", "--lr", "0.004",
          "--output_dir", str(out), "--report_n_boot", "200", "--seed", str(args.seed), "--overwrite"],
         "decoder training")

    mark("5/5 training a UNETR vessel-segmentation decoder on the same frozen encoder")
    seg_name = "vessel_segmentation"
    step(["train-seg", "--name", seg_name, "--data_path", str(data / "VesselSegmentation"), "--num_labels", "1",
          "--pretrained_weights", str(ckpt), "--checkpoint_key", "teacher", "--arch", "vit_tiny", "--input_size", size,
          "--epochs", str(args.seg_epochs), "--lr", "3e-3", "--batch_size_per_gpu", "8", "--no_augment",
          "--num_workers", "0", "--output_dir", str(out), "--seed", str(args.seed), "--overwrite"],
         "segmentation training")
    seg_metrics = json.loads((out / seg_name / "metrics.json").read_text())

    run_dir = out / cls_name
    report = run_dir / "report" / "report.html"
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    history = [json.loads(x) for x in (out / run_name / "log.txt").read_text().splitlines()]
    pick = {k: metrics.get(k) for k in ("accuracy", "balanced_accuracy", "auroc_macro", "f1_macro",
                                        "quadratic_weighted_kappa")}
    summary = {
        "pretraining_loss_per_epoch": [round(h["train_loss"], 4) for h in history],
        "test_metrics": pick,
        "chance_accuracy": 0.2,
        "report": str(report),
        "segmentation": {"vessel_dice": seg_metrics.get("dice_mean"), "vessel_iou": seg_metrics.get("iou_mean"),
                         "report": str(out / seg_name / "report.html")},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    save_json_atomic(summary, out / "summary.json")
    print("\n=== visionfm demo summary ===")
    print(f"pretraining loss per epoch : {summary['pretraining_loss_per_epoch']}")
    for key, value in pick.items():
        shown = f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"
        print(f"test {key:<22}: {shown}")
    print("(5-grade DR task; chance accuracy 0.200)")
    print(f"report                     : {report}")
    seg = summary["segmentation"]
    print(f"vessel Dice / IoU (test)   : {seg['vessel_dice']:.3f} / {seg['vessel_iou']:.3f}")
    print(f"segmentation report        : {seg['report']} (overlays of prediction and ground truth)")
    print(f"total time                 : {summary['seconds']} s")
    print(f"\nnext: visionfm predict --model {run_dir / 'model'} --input <image>   or   visionfm serve --models {out}")
    return 0
