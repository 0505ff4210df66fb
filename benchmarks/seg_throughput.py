"""Throughput of the dense (UNETR) decoder: train step and inference, images per second.

The train step is what ``visionfm train-seg`` runs with augmentation on: the frozen encoder under
``torch.no_grad()`` and autocast (bf16 on CUDA) producing 4 token levels, then the UNETR head's
forward, the Dice+Focal loss, backward and an AdamW step. Inference is encoder + head forward.

Example::

    python benchmarks/seg_throughput.py --arch vit_base --input_size 512 --batch_size 8 --steps 10
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="vit_base")
    ap.add_argument("--input_size", type=int, default=512)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--num_labels", type=int, default=4)
    ap.add_argument("--head_type", default="unetr", choices=["unetr", "linear"])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args()

    from visionfm import load_encoder
    from visionfm.models import dense_block_ids
    from visionfm.tasks.dense_common import DenseDecoder, FrozenFeatures, build_head
    from visionfm.tasks.losses import DiceFocalLoss

    dev = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) or args.device == "cuda"
                       else "cpu")
    encoder = load_encoder("random", args.arch, None, 16, args.input_size).to(dev)
    extractor = FrozenFeatures(encoder, dense_block_ids(encoder.depth))
    model = DenseDecoder(build_head(args.head_type, encoder.embed_dim, args.num_labels, 16)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loss_fn = DiceFocalLoss()
    s, b = args.input_size, args.batch_size
    images = torch.randn(b, 3, s, s, device=dev)
    target = torch.randint(0, max(args.num_labels, 2) if args.num_labels > 1 else 2, (b, s, s), device=dev)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def train_step() -> None:
        feats = extractor(images).float()
        with amp:
            logits = model(feats, images)
        loss = loss_fn(logits.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def infer_step() -> None:
        feats = extractor(images).float()
        with amp:
            model(feats, images)

    results = {}
    for name, fn, train in (("train_step", train_step, True), ("inference", infer_step, False)):
        model.train(train)
        for _ in range(args.warmup):
            fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn()
        sync()
        dt = time.perf_counter() - t0
        results[name] = b * args.steps / dt
    mem = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if dev.type == "cuda" else ""
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device={dev} ({where}) "
          f"arch={args.arch} head={args.head_type} input={s} batch={b} steps={args.steps}{mem}")
    for name, ips in results.items():
        print(f"  {name:<11} {ips:8.2f} images/s")


if __name__ == "__main__":
    main()
