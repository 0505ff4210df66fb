"""torchrun with two gloo processes on CPU: the same code path as one process; rank 0 alone writes;
and 2 processes × 4 images train the same weights as 1 process × 8 images (same global batch)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.pretrain.test_trainer import SRC, _flags, _write_images
from visionfm.cli.main import main as cli_main

pytestmark = [pytest.mark.distributed, pytest.mark.xdist_group("torchrun")]

# Same-global-batch comparison: no stochastic depth (its draws come from each process's own generator)
# and SGD, whose update is linear in the gradient, so rounding differences between an all-reduced mean
# of two half-batch gradients and one full-batch gradient stay at float32 level instead of being
# turned into ±lr steps by Adam's normalisation of near-zero gradients.
SAME_BATCH = ["--drop_path", "0", "--optimizer", "sgd", "--lr", "2.0", "--saveckp_freq", "1"]


def _torchrun(data, out, name, extra):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the interpreter"
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    flags = _flags(data, out, name, ["--batch_size_per_gpu", "4", *extra])
    cmd = [torchrun, "--nproc_per_node=2", "--master_port=0", "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0",
           "-m", "visionfm.cli.main", *flags]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out / name


def _initial_student(data, out, extra):
    """The student as built (same seed) before any step, under the checkpoint's key names."""
    from visionfm.cli.pretrain import config_from_argv
    from visionfm.pretrain.trainer import IBOTTrainer

    args = config_from_argv(_flags(data, out, "init", ["--batch_size_per_gpu", "8", *extra])[1:])
    tr = IBOTTrainer(args)
    tr.logger.close()
    return {f"module.{k}": v.clone() for k, v in tr.student.state_dict().items()}


def _flat(sd):
    return torch.cat([v.double().flatten() for k, v in sorted(sd.items()) if v.is_floating_point()])


def _losses(run):
    return [json.loads(x)["train_loss"] for x in (run / "log.txt").read_text().splitlines()]


def test_torchrun_two_processes_match_one_process_at_the_same_global_batch(tmp_path):
    data = tmp_path / "data"
    _write_images(data, "Fundus", 32)
    run = _torchrun(data, tmp_path / "out", "ddp", SAME_BATCH)
    files = sorted(p.name for p in run.iterdir())
    assert files == ["checkpoint.pth", "checkpoint0001.pth", "config.yaml", "log.txt", "tf_logs"]
    assert len(list((run / "tf_logs").iterdir())) == 1  # one event file: rank 0 only
    assert len(_losses(run)) == 2  # one line per epoch, not one per rank
    ddp = torch.load(run / "checkpoint.pth", weights_only=False)
    assert ddp["world_size"] == 2 and ddp["epoch"] == 2
    # 32 images, 4 per process × 2 processes → 4 iterations per epoch
    assert ddp["iteration"] == 8

    # the same run in one process with the same global batch of 8
    assert cli_main(_flags(data, tmp_path / "out", "single", ["--batch_size_per_gpu", "8", *SAME_BATCH])) == 0
    single = torch.load(tmp_path / "out" / "single" / "checkpoint.pth", weights_only=False)
    assert single["world_size"] == 1 and single["iteration"] == 8
    w0 = _flat(_initial_student(data, tmp_path / "init", SAME_BATCH))
    assert ddp["student"].keys() == single["student"].keys()
    moved = (_flat(single["student"]) - w0).norm()
    assert moved > 1e-3 * w0.norm(), "the learning rate should move the weights"
    for key in ("student", "teacher"):
        rel = float((_flat(ddp[key]) - _flat(single[key])).norm() / moved)
        print(f"{key}: |2x4 - 1x8| / |student displacement| = {rel:.1e}")
        # float32 rounding gives ~1e-6; unsynchronised gradients or duplicated data give ~1
        assert rel < 1e-4, (key, rel)
    la, lb = _losses(run), _losses(tmp_path / "out" / "single")
    print("losses 2x4", la, "1x8", lb)
    assert la == pytest.approx(lb, rel=1e-4)
    for k in ("center", "center2"):  # the all-reduced iBOT centres
        if k in single["ibot_loss"]:
            torch.testing.assert_close(ddp["ibot_loss"][k], single["ibot_loss"][k], rtol=1e-4, atol=1e-6)
