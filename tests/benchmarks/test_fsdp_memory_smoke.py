"""Smoke test of benchmarks/fsdp_memory.py: both modes run under torchrun (gloo, 2 CPU processes) and FSDP
holds half of DDP's per-rank training state — a property of the sharding, not a timing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.xdist_group("torchrun")]

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fsdp_memory.py"


def test_fsdp_halves_the_per_rank_state_of_two_processes(tmp_path):
    out = tmp_path / "fsdp.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--arch", "vit_tiny", "--input_size", "32", "--batch_size",
                           "2", "--steps", "1", "--json", str(out)], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out.read_text())
    ddp, fsdp = res["modes"]["ddp"], res["modes"]["fsdp"]
    # 2 ranks: every sharded tensor is split in two (dim 0, ±1 row of padding per tensor)
    assert 0.49 < res["ratios"]["state_fsdp_over_ddp"] < 0.51
    assert fsdp["params_bytes_per_rank"] * 2 == pytest.approx(ddp["params_bytes_per_rank"], rel=0.01)
    assert all(m["images_per_s"] > 0 and m["peak_bytes_per_rank"] > 0 for m in (ddp, fsdp))
    assert "fsdp / ddp: state per rank 0.50x" in proc.stdout
