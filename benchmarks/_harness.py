"""Shared benchmark harness: timing, per-provider peak memory, tables, JSON metadata, and
the inputs and runner of the bookkeeping benchmarks (sampling, memory bank)."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Precision modes of the benchmarks: mode -> (tensor dtype, TF32 for fp32 matmuls on CUDA).
# "float32" is strict fp32 (TF32 off, PyTorch's default); "tf32" is float32 tensors with
# TF32 on (CUDA only: no CPU path reads the flag).
MODES = {"float32": ("float32", False), "tf32": ("float32", True), "bfloat16": ("bfloat16", False)}


@contextlib.contextmanager
def tf32_matmul(enabled: bool) -> Iterator[None]:
    """TF32 for float32 CUDA matmuls on or off inside the block; the previous state after.

    torch >= 2.9 keeps two records of this switch, the new
    ``torch.backends.cuda.matmul.fp32_precision`` and the legacy one behind ``allow_tf32``,
    and reading ``allow_tf32`` (or ``at::globalContext().allowTF32CuBLAS()`` in C++, which
    csrc/cuda/infonce_binding.cpp calls, and torch's own inductor) raises "mix of the legacy
    and new APIs" whenever the two disagree. Setting only ``fp32_precision = "tf32"`` makes
    them disagree (checked on torch 2.13); the ``allow_tf32`` setter writes *both* records
    (Context::setAllowTF32CuBLAS), so it is the one used to switch. The previous state is
    read from ``fp32_precision`` where it exists (that read never raises) and written back
    exactly, ``"none"`` (inherit) included. torch < 2.9: the one ``allow_tf32`` flag.
    """
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        prev_flag = bool(matmul.allow_tf32)
        matmul.allow_tf32 = enabled
        try:
            yield
        finally:
            matmul.allow_tf32 = prev_flag
        return
    prev = matmul.fp32_precision
    matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        matmul.allow_tf32 = prev == "tf32"  # both records agree again ...
        if matmul.fp32_precision != prev:  # ... and "none" stays "none" (still agreeing)
            matmul.fp32_precision = prev


def precision(mode: str) -> contextlib.AbstractContextManager:
    """The TF32 state of a precision mode (see MODES) around a timed or measured call."""
    return tf32_matmul(MODES[mode][1])


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
    # The GPU machine's copy of the tree carries a stale .git (or none): there
    # benchmarks/gpu_session.sh passes the commit, and it takes precedence.
    commit = os.environ.get("PIXCONTRAST_COMMIT") or None
    if commit is None:
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


# --------------------------------------------------------------------------------------
# The step's bookkeeping (bench_sampling.py, bench_memory_bank.py): inputs and a runner
# --------------------------------------------------------------------------------------

LABEL_IGNORE = 255
CLASSES = 19
# quick -> (B, h, w, D, bank size per class and kind): at paper size 8 label maps of
# 128×256 and a 19-class bank of 5000 entries; pixels_per_update is 10, max_samples 1024.
STEP_SIZES = {False: (8, 128, 256, 256, 5000), True: (2, 64, 128, 64, 500)}


def label_maps(batch: int, h: int, w: int, classes: int, device: str,
               ignore_fraction: float = 0.05, error_rate: float = 0.2):
    """Cityscapes-like maps: class regions (a coarse random map, nearest-upsampled 16x),
    ~5% ``LABEL_IGNORE`` pixels, predictions wrong on ~20% of pixels. Global RNG."""
    coarse = torch.randint(0, classes, (batch, max(h // 16, 1), max(w // 16, 1)))
    labels = coarse.repeat_interleave(16, 1).repeat_interleave(16, 2)[:, :h, :w]
    labels = torch.where(torch.rand(labels.shape) < ignore_fraction, LABEL_IGNORE, labels)
    preds = torch.where(torch.rand(labels.shape) < error_rate,
                        torch.randint(0, classes, labels.shape), labels)
    preds = torch.where(labels == LABEL_IGNORE, torch.randint(0, classes, labels.shape), preds)
    return labels.to(device).contiguous(), preds.to(device).contiguous()


def kernel_backends(device: str, *ops) -> list[str]:
    """The kernel backends (all but plain ``"torch"``) that every op of ``ops`` (their
    ``BACKENDS``, pixcontrast._backends.OpBackends) can run on ``device``, as the ops' own
    chooser answers; in the first op's order."""
    dev = torch.device(device)
    return [name for name in ops[0].checks if name != "torch"
            and all(name in op.checks and not op.reasons(name, dev) for op in ops)]


# a workload: () -> (shape description, {provider: zero-argument callable}), baseline first
Workload = Callable[[], tuple[str, dict[str, Callable[[], object]]]]


def time_workloads(workloads: dict[str, Workload], device: str, repeats: int) -> list[dict]:
    """Median and 20th/80th percentiles of every provider of every workload (CUDA events on
    GPU, perf_counter on CPU), speed-up against the first provider. Seed 0 per workload."""
    timer = time_cuda if device == "cuda" else time_cpu
    records = []
    for name, build in workloads.items():
        torch.manual_seed(0)
        shape, providers = build()
        base = None
        for provider, fn in providers.items():
            t = timer(fn, repeats)
            base = base or t["median"]
            records.append({"workload": name, "shape": shape, "provider": provider,
                            "median_ms": t["median"], "p20_ms": t["p20"], "p80_ms": t["p80"],
                            "speedup": base / t["median"]})
    return records


def report_workloads(records: list[dict], device: str, json_path: str | None,
                     baseline: str = "loop-2021") -> None:
    """The environment line and the table on stdout; ``{"environment", "records"}`` JSON."""
    env = environment(device)
    print(f"{env['device_name']}, {env['cpu_threads']} threads, torch {env['torch']}, "
          f"triton {env['triton']}, commit {env['commit']}, "
          f"{datetime.date.today().isoformat()}\n")
    print(markdown_table(records, [
        ("workload", "workload"), ("shape", "shape"), ("provider", "provider"),
        ("median ms", "median_ms"), ("p20 ms", "p20_ms"), ("p80 ms", "p80_ms"),
        (f"speed-up vs {baseline}", "speedup")]))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"environment": env, "records": records}, f, indent=1)
