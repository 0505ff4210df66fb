"""``visionfm demo``: the whole pipeline on embedded synthetic data, on CPU, in a few minutes.

synthetic data → brief iBOT pretraining of a tiny encoder → frozen features → linear probe of a
5-grade classification task, compared with the same probe on a randomly initialised encoder.
Every step is a real library call (no stubs); the summary ends with where the outputs are.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output_dir", default="demo_output", help="everything the demo writes goes here")
    parser.add_argument("--img_size", type=int, default=64, help="synthetic image side")
    parser.add_argument("--num", type=int, default=96, help="images per split / per modality")
    parser.add_argument("--pretrain_epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)


def _features(encoder, dataset, batch_size: int = 32):
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    feats, labels = [], []
    encoder.eval()
    with torch.no_grad():
        for x, y, _ in loader:
            layers = encoder.get_intermediate_layers(x, 4)
            feats.append(torch.cat([t[:, 0] for t in layers], dim=-1).numpy())
            labels.append(y[:, 0].long().numpy())
    return np.concatenate(feats), np.concatenate(labels)


def _probe(train, test) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    clf.fit(*train)
    return float(clf.score(*test))


def run(args: argparse.Namespace) -> int:
    import torch
    from torchvision.transforms import v2

    from visionfm import load_encoder
    from visionfm.cli.main import main as cli
    from visionfm.data.layouts import VFMDataset
    from visionfm.data.modalities import get_stats
    from visionfm.data.synth import generate
    from visionfm.io.atomic import save_json_atomic

    torch.manual_seed(args.seed)
    out = Path(args.output_dir)
    data = out / "data"
    t0 = time.perf_counter()
    steps: list[tuple[str, float]] = []

    def mark(label: str) -> None:
        steps.append((label, time.perf_counter() - t0))
        print(f"[demo {steps[-1][1]:6.1f}s] {label}", flush=True)

    generate("pretrain", data / "pretrain", num=args.num * 2, img_size=args.img_size, seed=args.seed)
    generate("single_cls", data, num=args.num * 2, img_size=args.img_size, seed=args.seed + 1)
    mark("synthetic data written (8 pretraining modalities + 5-grade fundus classification)")

    run_name = "demo_ibot"
    code = cli([
        "pretrain", "--data_path", str(data / "pretrain"), "--modality", "Fundus", "--arch", "vit_tiny",
        "--input_size", str(args.img_size), "--batch_size_per_gpu", "32", "--epochs", str(args.pretrain_epochs),
        "--warmup_epochs", "1", "--warmup_teacher_temp_epochs", "1", "--lr", "2e-3", "--out_dim", "1024",
        "--patch_out_dim", "1024", "--local_crops_number", "0", "--num_workers", "2", "--saveckp_freq", "1000",
        "--name", run_name, "--output_dir", str(out), "--seed", str(args.seed), "--no_progress",
    ])
    if code != 0:
        print("demo: pretraining failed")
        return code
    ckpt = out / run_name / "checkpoint.pth"
    mark(f"iBOT pretraining done → {ckpt}")

    mean, std = get_stats("Fundus")
    tf = v2.Compose([v2.Resize((args.img_size, args.img_size)), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(list(mean), list(std))])
    root = data / "FundusClassification"
    train_ds = VFMDataset(root, "training", transform=tf, num_labels=5)
    test_ds = VFMDataset(root, "test", transform=tf, num_labels=5)
    results = {}
    for label, weights in (("pretrained (demo iBOT teacher)", ckpt), ("random init", "random")):
        enc = load_encoder(weights, arch="vit_tiny", checkpoint_key="teacher", img_size=args.img_size)
        tr, te = _features(enc, train_ds), _features(enc, test_ds)
        results[label] = {"probe_accuracy": _probe(tr, te), "feature_dim": int(tr[0].shape[1]),
                          "train_images": len(train_ds), "test_images": len(test_ds)}
    mark("features extracted (CLS of the last 4 blocks) and linear probes fitted")

    history = [json.loads(line) for line in (out / run_name / "log.txt").read_text().splitlines()]
    summary = {
        "pretraining_loss_per_epoch": [round(h["train_loss"], 4) for h in history],
        "linear_probe": results,
        "chance_accuracy": 0.2,
        "outputs": {"checkpoint": str(ckpt), "tensorboard": str(out / run_name / "tf_logs"), "data": str(data)},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    save_json_atomic(summary, out / "summary.json")
    print("\n=== visionfm demo summary ===")
    print(f"pretraining loss per epoch : {summary['pretraining_loss_per_epoch']}")
    for label, r in results.items():
        print(f"linear probe, {label:<31}: accuracy {r['probe_accuracy']:.3f}  (chance 0.200, {r['test_images']} test images)")
    print(f"checkpoint                 : {ckpt}")
    print(f"summary                    : {out / 'summary.json'}")
    print(f"total time                 : {summary['seconds']} s")
    return 0
