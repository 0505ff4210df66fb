"""Two gloo processes at 2x8 per step train the same weights as one process at 16 per step: the
engine shards each epoch's permutation so the union of the ranks' batches is the single-process batch,
and DDP averages the gradients. A rank that trained on its shard alone (no all-reduce), or ranks that
saw the same rows, would end elsewhere."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.distributed, pytest.mark.xdist_group("torchrun")]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(Path(__file__).with_name("ddp_fit.py"))


def _env():
    return dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}", OMP_NUM_THREADS="1")


def test_two_processes_equal_one_process_at_the_same_global_batch(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the interpreter"
    one = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "one"), "16"], env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port=0", "--rdzv_backend=c10d",
                          "--rdzv_endpoint=127.0.0.1:0", SCRIPT, str(tmp_path / "two"), "8"], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "weights.pt")
    b = torch.load(tmp_path / "two" / "weights.pt")
    torch.manual_seed(1)  # ddp_fit.py's initial weights
    init = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    moved = max((a[k] - v).abs().max().item() for k, v in init.state_dict().items())
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert moved > 1e-3  # the weights did move: the comparison is not between two untrained models
