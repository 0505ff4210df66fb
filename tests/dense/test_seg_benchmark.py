"""``benchmarks/seg_throughput.py`` runs and prints both figures (tiny settings)."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "seg_throughput.py"


def test_seg_throughput_smoke():
    out = subprocess.run([sys.executable, str(SCRIPT), "--arch", "vit_tiny", "--input_size", "32", "--batch_size", "2",
                          "--steps", "1", "--warmup", "0", "--device", "cpu"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "train_step" in out and "inference" in out and "images/s" in out
