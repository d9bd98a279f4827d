"""pixcontrast.baselines: the 2021 procedures that the benchmarks time the library against.

Whether each baseline computes what the library computes is checked beside that op's
oracle: ``unfused_pixel_contrast`` in test_infonce_reference.py, ``sample_anchors_loop_2021`` in
test_sampling.py, ``memory_bank_update_loop_2021`` in test_memory_bank.py. Here: nothing in
the library uses them, the benchmarks that time them run, and the benchmarks stay
self-contained (no script imports another, no test loads one by its path).
"""

from __future__ import annotations

import ast
import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def _imported_modules(path: str) -> set[str]:
    """Every module an ``import``/``from`` statement of the file names (relative ones with
    their leading dots)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = "." * node.level + (node.module or "")
            out.add(mod)
            out |= {f"{mod}.{a.name}" if node.module else mod + a.name for a in node.names}
    return out


def test_nothing_in_the_library_uses_the_baselines():
    files = glob.glob(os.path.join(ROOT, "pixcontrast", "**", "*.py"), recursive=True)
    files += glob.glob(os.path.join(ROOT, "kernels", "**", "*.py"), recursive=True)
    users = [os.path.relpath(f, ROOT) for f in files
             if os.path.basename(f) != "baselines.py"
             and any(m.split(".")[-1] == "baselines" for m in _imported_modules(f))]
    assert users == []


def test_no_benchmark_imports_another_and_no_test_loads_one_by_path():
    scripts = {os.path.splitext(os.path.basename(p))[0]
               for p in glob.glob(os.path.join(BENCH, "*.py"))} - {"_harness"}
    # profile_loss.py profiles bench_loss.py's workloads (QUICK, WORKLOADS, make_inputs,
    # sync): the one import of a benchmark by another, until those move to _harness.py.
    allowed = {("profile_loss", "bench_loss")}
    found = {(os.path.splitext(os.path.basename(p))[0], m.split(".")[0])
             for p in glob.glob(os.path.join(BENCH, "*.py"))
             for m in _imported_modules(p) if m.split(".")[0] in scripts}
    assert found <= allowed, sorted(found - allowed)
    by_path = []
    for p in glob.glob(os.path.join(ROOT, "tests", "**", "*.py"), recursive=True):
        with open(p) as f:
            tree = ast.parse(f.read(), p)
        if any(isinstance(n, ast.Attribute) and n.attr == "spec_from_file_location"
               for n in ast.walk(tree)):
            by_path.append(os.path.relpath(p, ROOT))
    assert by_path == []


@pytest.mark.parametrize("script, workloads", [
    ("bench_sampling.py", ["sampling", "sampling+update"]),
    ("bench_memory_bank.py", ["bank-update"]),
])
def test_benchmark_of_the_loops_runs(tmp_path, script, workloads):
    out = tmp_path / "records.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(BENCH, script), "--quick", "--device",
                           "cpu", "--repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert {"torch", "commit", "device_name"} <= data["environment"].keys()
    records = data["records"]
    # on the CPU: the loop, then the library's torch path, per workload
    assert [(r["workload"], r["provider"]) for r in records] == [
        (w, p) for w in workloads for p in ("loop-2021", "pixcontrast-torch")]
    for r in records:
        assert r["median_ms"] > 0 and r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["speedup"] > 0 and r["shape"].startswith("B=2 64x128")
    assert all(r["speedup"] == 1.0 for r in records if r["provider"] == "loop-2021")
    assert proc.stdout.count("| loop-2021 |") == len(workloads)  # the table
