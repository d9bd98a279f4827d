"""benchmarks/profile_loss.py on the CPU (the CI dry run): structure of its JSON and tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cpu_quick_profile_writes_a_table_per_backend(tmp_path):
    out_json, out_md = tmp_path / "prof.json", tmp_path / "prof.md"
    env = {**os.environ}
    env.pop("TRITON_INTERPRET", None)  # real backends only: on the CPU, cpu
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "profile_loss.py"), "--device", "cpu",
         "--quick", "--json", str(out_json), "--md", str(out_md)],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(out_json.read_text())
    assert out["device"] == "cpu" and out["modes"] == ["bfloat16"] and out["steps"] == 5
    assert [(t["backend"], t["mode"]) for t in out["tables"]] == [("cpu", "bfloat16")]
    for t in out["tables"]:
        assert t["status"] == "ok" and t["time_kind"] == "self_cpu"
        assert t["wall_ms_per_step"] > 0 and t["profiled_ms_per_step"] > 0
        assert t["kernel_launches_per_step"] is None and t["op_calls_per_step"] > 0
        rows = t["rows"]
        assert rows and all(r["us_per_step"] > 0 and r["calls_per_step"] > 0 for r in rows)
        assert [r["us_per_step"] for r in rows] == sorted((r["us_per_step"] for r in rows),
                                                          reverse=True)
        assert all(0 < r["share"] <= 1 for r in rows)
        assert sum(r["share"] for r in rows) <= 1.0 + 1e-6
        assert abs(sum(r["share"] for r in rows) - t["covered_share"]) < 1e-6
        # the loss's own op is in the profile
        assert any("infonce" in r["name"] for r in rows)
    md = out_md.read_text()
    assert md in proc.stdout and "### cpu · bfloat16" in md and "| op (self CPU time) |" in md
    assert "step wall time" in md
