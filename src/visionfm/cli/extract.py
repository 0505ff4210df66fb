"""``visionfm extract``: frozen-encoder features of a vfm-layout data set into feature stores (§5.1, §2.9).

Output: ``<output_dir>/<dataset>/<split>/pass_<k>/`` (``--output_dir``, alias the original's
``--dst_root``; see :mod:`visionfm.data.features`). The training split gets ``--epochs`` passes with
seeded random H+V flips, ``val`` (when present) and ``test`` one pass without augmentation.
"""

from __future__ import annotations

import logging

from visionfm.cli.options import (
    NUM_WORKERS,
    VFMArgumentParser,
    add_amp_argument,
    add_arch_arguments,
    add_device_argument,
    add_modality_argument,
)

log = logging.getLogger("visionfm.extract")


def add_arguments(p: VFMArgumentParser) -> None:
    p.add_argument("--pretrained_weights", required=True, help="encoder weights file, or 'random' (explicit)")
    p.add_argument("--checkpoint_key", default="teacher", help="sub-dict of the weights file holding the encoder")
    add_arch_arguments(p)
    add_modality_argument(p)
    p.add_argument("--data_path", default="./data/FundusClassification/",
                   help="a vfm-layout data set, or a folder of them (the original's default)")
    p.add_argument("--output_dir", "--dst_root", dest="dst_root", required=True, metavar="OUTPUT_DIR",
                   help="output folder of the feature stores (the original's --dst_root)")
    p.add_argument("--batch_size_per_gpu", "--batch_size", type=int, default=128, help="images per batch and process")
    p.add_argument("--epochs", type=int, default=10, help="flip-augmented passes over the training split")
    p.add_argument("--input_size", type=int, default=224, help="side S of the square input (multiple of 16)")
    p.add_argument("--mode", default="cls", choices=["cls", "seg"],
                   help="seg also stores the patch tokens of the dense block ids")
    p.add_argument("--num_workers", type=int, default=NUM_WORKERS, help="image-loading workers per process")
    p.add_argument("--seed", type=int, default=0, help="random seed (flips of the augmented passes)")
    add_device_argument(p)
    add_amp_argument(p)
    p.add_distributed_arguments()
    p.add_config_argument()


def run(args) -> int:
    from pathlib import Path

    from visionfm import load_encoder
    from visionfm.data.layouts import VFMDataset, find_vfm_datasets
    from visionfm.data.names import CLASSES_FILE, find_names_file
    from visionfm.engine.distributed import command_session
    from visionfm.engine.features import (
        FlipView,
        encoder_identity,
        eval_transform,
        extract_to_store,
        resolve_modality,
    )
    from visionfm.io import save_text_atomic

    with command_session(args.device, seed=args.seed) as env:  # identical random encoders on every rank
        # --arch/--patch_size None: read from the file; the store records what was loaded (encoder_identity)
        encoder = load_encoder(args.pretrained_weights, args.arch, args.checkpoint_key, args.patch_size,
                               args.input_size).to(env.device)
        modality = resolve_modality(args.modality, args.pretrained_weights)
        identity = encoder_identity(encoder, modality, args.input_size, args.mode)
        tf = eval_transform(args.input_size, modality, "bilinear")
        dst = Path(args.dst_root)
        counts = {"written": 0, "skipped": 0}
        for ds_dir in find_vfm_datasets(args.data_path):
            names = None if ds_dir == Path(args.data_path) else [ds_dir.name]
            for split in VFMDataset.available_splits(args.data_path, names):
                base = VFMDataset(args.data_path, split, transform=tf, datasets=names)
                passes = args.epochs if split == "training" else 1
                for k in range(passes):
                    flip = split == "training"
                    data = FlipView(base, args.seed, k) if flip else base
                    meta = {"split": split, "pass": k, "passes": passes, "flip": "hv" if flip else "none",
                            "seed": args.seed, "dataset": ds_dir.name, "interpolation": "bilinear",
                            "autocast": "bf16" if args.amp and env.device.type == "cuda" else "fp32"}
                    folder = dst / ds_dir.name / split / f"pass_{k}"
                    status = extract_to_store(encoder, data, folder, identity, meta, env, args.batch_size_per_gpu,
                                              args.num_workers, args.mode,
                                              desc=f"{ds_dir.name}/{split}/pass_{k}", amp=args.amp)
                    counts[status] += 1
            if env.is_main:  # the names travel with the stores, so train-cls --features finds them
                found = find_names_file(args.data_path, datasets=[ds_dir.name] if names else None)
                if found:
                    save_text_atomic("\n".join(found[0]) + "\n", dst / ds_dir.name / CLASSES_FILE)
        if env.is_main:
            log.info("feature stores under %s: %d written, %d already complete", dst, counts["written"],
                     counts["skipped"])
        return 0
