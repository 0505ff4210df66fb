"""Smoke test of benchmarks/pretrain_throughput.py: the tiniest configuration runs end to end and
reports sane figures. Deliberately no timing assertions (speed is the benchmark's job, not CI's)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "pretrain_throughput.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("vfm_bench_pretrain_throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_tiny_benchmark_reports_all_figures_and_baseline_uses_explicit_attention(tmp_path, capsys):
    bench = _load_script()
    out = tmp_path / "bench.json"
    returned = bench.main([
        "--arch", "vit_tiny", "--batch_size", "2", "--input_size", "32", "--steps", "2", "--warmup", "1",
        "--workers", "0", "--jpeg_size", "64", "--num_jpegs", "8", "--threads", "1",
        "--tmp_dir", str(tmp_path), "--json", str(out),
    ])
    res = json.loads(out.read_text())
    assert res == json.loads(json.dumps(returned))
    assert "images/s" in capsys.readouterr().out  # the table was printed

    ours, base = res["ours"], res["baseline"]
    for figure in (ours["images_per_s"], base["images_per_s"], res["pipeline"]["images_per_s"],
                   res["end_to_end"]["images_per_s"], res["ratio_ours_over_baseline"],
                   ours["tflops_per_s"], ours["peak_memory_gib"], base["peak_memory_gib"]):
        assert _positive_finite(figure), figure
    assert isinstance(ours["flops_per_step"], int) and ours["flops_per_step"] > 0
    if res["device_type"] == "cpu":  # no autocast on either side
        assert ours["precision"] == base["precision"] == "fp32"
    else:  # --precision auto: bf16 where supported; the original's style is fp16 + GradScaler
        assert ours["precision"] in ("bf16", "fp16") and base["precision"] == "fp16"

    # The baseline's attention really is the explicit softmax path: every timm Attention module of
    # student and teacher had fused_attn switched off, and the counted step dispatched no SDPA kernel
    # (while ours did, which shows the op tally can see one).
    n_attn = 2 * 12  # vit_tiny: 12 blocks in the student and 12 in the teacher
    assert ours["attention_modules"] == base["attention_modules"] == n_attn
    assert ours["fused_attention_modules"] == n_attn
    assert base["fused_attention_modules"] == 0
    assert any("scaled_dot_product" in op for op in ours["attention_ops"])
    assert not any("scaled_dot_product" in op for op in base["attention_ops"])
    assert base["attention_ops"].get("_softmax", 0) >= n_attn
    # Ours projects only the masked patch tokens through the head: less work than the full-token step.
    assert 0.3 * base["flops_per_step"] < ours["flops_per_step"] < base["flops_per_step"]
    # The temporary JPEG folder was cleaned up.
    assert not any(p.name.startswith("vfm_bench_") for p in tmp_path.iterdir())


def test_set_fused_attention_flips_every_timm_attention_module():
    bench = _load_script()
    from visionfm.models.encoder import VisionFMEncoder

    enc = VisionFMEncoder("vit_tiny", img_size=32)
    assert bench.set_fused_attention(enc, False) == 12
    assert all(m.fused_attn is False for m in bench.attention_modules(enc))
    assert bench.set_fused_attention(enc, True) == 12
    assert all(m.fused_attn is True for m in bench.attention_modules(enc))
