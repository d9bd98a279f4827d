"""benchmarks/bench_loss.py --quick: structure of its outputs (not timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"workload", "provider", "dtype", "device", "fwd_ms", "fwd_bwd_ms", "peak_mem_mb",
        "status", "tflops", "roofline_fraction", "speedup_vs_unfused", "torch", "triton",
        "commit", "N", "M", "D"}


def test_quick_run_writes_json_table_and_plot(tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    env = {**os.environ}
    env.pop("TRITON_INTERPRET", None)  # the benchmark measures real backends only
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_loss.py"), "--quick",
         "--device", "cpu", "--repeats", "1", "--json", str(out_json), "--plot", str(out_png)],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads(out_json.read_text())
    assert {(r["workload"], r["provider"], r["dtype"]) for r in records} >= {
        ("paper-bank", "unfused", "float32"), ("paper-bank", "pixcontrast-cpu", "float32"),
        ("paper-bank", "pixcontrast-cpu", "bfloat16"), ("paper-mem-config", "unfused", "float32"),
        ("paper-bank", "unfused-compiled", "float32")}
    for r in records:
        assert KEYS <= r.keys(), KEYS - r.keys()
        assert r["status"] in {"ok", "oom", "timeout", "unsupported", "error"}
        if r["status"] == "ok":
            assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["tflops"] > 0
            assert r["speedup_vs_unfused"] > 0
    fused = next(r for r in records if r["provider"] == "pixcontrast-cpu"
                 and r["workload"] == "paper-bank" and r["dtype"] == "float32")
    assert fused["status"] == "ok" and fused["peak_mem_mb"] is not None
    # the markdown table is on stdout, one row per record
    assert proc.stdout.count("\n| paper-") == len(records)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
