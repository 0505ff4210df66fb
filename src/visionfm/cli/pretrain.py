"""``visionfm pretrain``: iBOT self-supervised pretraining (flags of the original ``main_pretrain.py``)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from visionfm.pretrain.config import add_pretrain_arguments

    add_pretrain_arguments(parser)  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> int:
    from visionfm.engine.distributed import cleanup_distributed, init_distributed
    from visionfm.engine.logging import setup_logging
    from visionfm.pretrain.config import validate_pretrain_args
    from visionfm.pretrain.trainer import NonFiniteLossError, IBOTTrainer

    validate_pretrain_args(args)
    env = init_distributed(args.device)
    setup_logging(env.is_main)
    try:
        trainer = IBOTTrainer(args, env)
        history = trainer.fit()
        if env.is_main and history:
            first, last = history[0]["train_loss"], history[-1]["train_loss"]
            print(f"pretraining finished: loss {first:.4f} → {last:.4f}; checkpoint: {trainer.run_dir / 'checkpoint.pth'}")
        return 0
    except NonFiniteLossError as exc:
        print(f"visionfm pretrain: stopped: {exc}")
        return 3
    finally:
        cleanup_distributed()
