"""torchrun with two gloo processes on CPU: the same code path as one process; rank 0 alone writes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.pretrain.test_trainer import SRC, _flags, _write_images

pytestmark = [pytest.mark.distributed, pytest.mark.xdist_group("torchrun")]


def test_torchrun_two_processes_gloo(tmp_path):
    data = tmp_path / "data"
    _write_images(data, "Fundus", 32)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the interpreter"
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    flags = _flags(data, tmp_path / "out", "ddp", ["--batch_size_per_gpu", "4", "--saveckp_freq", "1"])
    cmd = [torchrun, "--nproc_per_node=2", "--master_port=0", "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0",
           "-m", "visionfm.cli.main", *flags]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run = tmp_path / "out" / "ddp"
    files = sorted(p.name for p in run.iterdir())
    assert files == ["checkpoint.pth", "checkpoint0001.pth", "config.yaml", "log.txt", "tf_logs"]
    assert len(list((run / "tf_logs").iterdir())) == 1  # one event file: rank 0 only
    lines = [json.loads(x) for x in (run / "log.txt").read_text().splitlines()]
    assert len(lines) == 2  # one line per epoch, not one per rank
    ckpt = torch.load(run / "checkpoint.pth", weights_only=False)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 2
    # 32 images, 4 per process × 2 processes → 4 iterations per epoch
    assert ckpt["iteration"] == 8
