"""Shared benchmark harness: timing, per-provider peak memory, tables, JSON metadata."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quantiles(samples_ms: list[float]) -> dict[str, float]:
    s = sorted(samples_ms)

    def q(p: float) -> float:
        return s[min(len(s) - 1, max(0, round(p * (len(s) - 1))))]

    return {"median": statistics.median(s), "p20": q(0.2), "p80": q(0.8), "min": s[0]}


def time_cpu(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict[str, float]:
    """perf_counter medians on CPU (CUDA events are used on GPU by the caller)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return quantiles(samples)


def time_cuda(fn: Callable[[], object], repeats: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return quantiles(samples)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS counter (Linux ≥ 4.0) and return the current RSS in kB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS")


def peak_rss_kb() -> int:
    return _status_kb("VmHWM")


def run_child(script: str, spec: dict, timeout_s: float) -> dict:
    """Run one provider in a fresh process, so its peak memory is its own."""
    cmd = [sys.executable, script, "--child", json.dumps(spec)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "timeout"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        err = (out.stderr or out.stdout).strip().splitlines()
        oom = out.returncode in (-9, 137) or any("memory" in e.lower() for e in err[-3:])
        return {"status": "oom" if oom else "error", "error": " | ".join(err[-3:])}
    return json.loads(lines[-1])


def environment(device: str) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip() or None
    except OSError:
        commit = None
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(ln.split(":", 1)[1].strip() for ln in f if "model name" in ln)
        except (OSError, StopIteration):
            pass
    return {"device_name": name, "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__, "triton": triton_version, "commit": commit,
            "python": platform.python_version()}


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    def fmt(v):
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    head = "| " + " | ".join(h for h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for _, k in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])
