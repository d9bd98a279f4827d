"""Pin an asynchronous CUDA fault (e.g. "misaligned address") to one kernel, in ~1 minute.

    python benchmarks/gpu_triage.py                 # every probe
    python benchmarks/gpu_triage.py --probe gemm    # probes whose name contains "gemm"

Each probe runs in a fresh process with ``CUDA_LAUNCH_BLOCKING=1``, so a fault cannot
poison the next one, and every Triton launch of kernels/infonce.py is followed by a
synchronisation that names the kernel if it faulted. Probes: the dense bf16 cuBLAS GEMM
at the test's odd leading dimension (K = 300), the Triton and CUDA backends on the D=300
bf16 cases that faulted on the H200 of 2026-11-29 (forward, then backward), the dense bf16
reference of those cases, and the Triton column backward under other tile configurations.
Also the two bad-argument calls of the CUDA ops that crashed their process with a
segmentation fault on the H200 of 2026-11-30 (a shape error naming the argument is
expected). One line per probe: ``ok`` or the fault and where it happened; a probe killed
by a signal is run again under cuda-gdb (batch mode), which prints the native backtrace.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PRELUDE = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, %(root)r)
    from pixcontrast.kernels import infonce as K
    from tests._oracle import make_case, run

    def named_sync(name, kernel):
        class Synced:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    kernel[grid](*args, **kwargs)
                    try:
                        torch.cuda.synchronize()
                    except Exception as exc:
                        print(f"FAULT in {name} grid={tuple(grid)}: {exc}".splitlines()[0],
                              flush=True)
                        raise SystemExit(3)
                return launch
        return Synced()

    for _name in [n for n in vars(K) if n.endswith("_kernel")]:
        setattr(K, _name, named_sync(_name, getattr(K, _name)))

    def cuda_case(mode, d=300, dtype=torch.bfloat16):
        case = make_case(mode, n=333, m=4099, d=d, classes=19, dtype=dtype)
        case.anchors, case.labels = case.anchors.cuda(), case.labels.cuda()
        if case.contrast is not None:
            case.contrast = case.contrast.cuda()
            case.contrast_labels = case.contrast_labels.cuda()
        return case
    torch.manual_seed(0)
    """)

GEMM = """
for n in (333, 4099, 4432):
    a = torch.randn(333, 300, device="cuda").bfloat16()
    c = torch.randn(n, 300, device="cuda").bfloat16()
    s = a @ c.T
    torch.cuda.synchronize()
"""

BACKEND = """
case = cuda_case(%(mode)r)
up = torch.randn((), device="cuda", dtype=torch.float64)
run(case, backend=%(backend)r, upstream=up)
torch.cuda.synchronize()
"""

DENSE = """
case = cuda_case(%(mode)r)
up = torch.randn((), device="cuda", dtype=torch.float64)
run(case, backend="oracle", upstream=up, compute_dtype=torch.bfloat16)
torch.cuda.synchronize()
"""

BAD_ARGUMENT = """
import pixcontrast  # loads the extension and its CUDA kernels
i64 = torch.zeros(12, dtype=torch.int64, device="cuda")
b = torch.zeros(12, dtype=torch.bool, device="cuda")
f = torch.zeros(10, 4, device="cuda")
lab = torch.full((10,), -1, device="cuda")
v = torch.randn(3, 4, device="cuda")
rows = torch.tensor([0, 1, 2], device="cuda")
keep = torch.ones(3, dtype=torch.bool, device="cuda")
for call in (%(calls)s):
    try:
        call()
    except RuntimeError as exc:
        print("raised:", str(exc).splitlines()[0], flush=True)
    else:
        raise SystemExit("no error raised")
"""

CONFIG = """
import dataclasses
_default = K._gpu_config
K._gpu_config = lambda *a, **k: dataclasses.replace(_default(*a, **k), %(cfg)s)
case = cuda_case("self")
up = torch.randn((), device="cuda", dtype=torch.float64)
run(case, backend="triton", upstream=up)
torch.cuda.synchronize()
"""


def probes() -> dict[str, str]:
    out = {}
    hist = ("lambda: torch.ops.pixcontrast.sample_select(i64.view(2, 6), i64.view(2, 6), "
            "torch.zeros(7, 6, dtype=torch.int64, device='cuda'), i64[:5].clone(), %s, 1)")
    write = "lambda: torch.ops.pixcontrast.bank_write(f, lab, v, rows, keep, %s)"
    for name, calls in (
            ("cuda-bad-shape-sampling-copy", hist % "i64[:4].clone()"),
            ("cuda-bad-shape-sampling-view", hist % "i64[:4]"),
            ("cuda-bad-shape-bank-write-copy", write % "rows[:2].clone()"),
            ("cuda-bad-shape-bank-write-view", write % "rows[:2]"),
            ("cuda-bad-dtype-bank-write", write.replace("v,", "v.double(),") % "rows")):
        out[name] = BAD_ARGUMENT % {"calls": calls + ","}
    out["gemm-bf16-K300"] = GEMM
    for mode in ("self", "bank+anchors"):
        for backend in ("triton", "cuda"):
            out[f"{backend}-bf16-D300-{mode}"] = BACKEND % {"mode": mode, "backend": backend}
        out[f"dense-bf16-reference-D300-{mode}"] = DENSE % {"mode": mode}
    # The self-contrast column backward's tile (rows, columns, warps, stages) over the
    # default configuration (kernels/infonce.py _gpu_config; D = 300 bf16: 32×64, 8 warps).
    for n_, m_, w_, st_ in ((32, 64, 8, 2), (32, 32, 8, 2), (64, 32, 8, 1), (32, 64, 4, 2)):
        cfg = (f"block_n={n_}, block_m={m_}, col_block_n={n_}, num_warps={w_}, "
               f"col_warps={w_}, num_stages={st_}")
        out[f"triton-bf16-D300-self-config-{n_}x{m_}x{w_}x{st_}"] = CONFIG % {"cfg": cfg}
    return out


def native_backtrace(code: str, env: dict, timeout: float, frames: int = 30) -> str:
    gdb = shutil.which("cuda-gdb") or shutil.which("gdb")
    if gdb is None:
        return "  (no cuda-gdb or gdb on this machine)"
    cmd = [gdb, "-q", "-batch", "-ex", "run", "-ex", f"bt {frames}", "--args",
           sys.executable, "-c", code]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                             cwd=ROOT)
    except subprocess.TimeoutExpired:
        return f"  ({os.path.basename(gdb)} timed out)"
    bt = [ln for ln in out.stdout.splitlines() if ln.startswith("#") or "signal" in ln]
    return "\n".join("  " + ln[:200] for ln in bt[:frames + 2]) or out.stdout[-2000:]


def run_probe(name: str, body: str, timeout: float, gdb: bool = True) -> str:
    code = PRELUDE % {"root": ROOT} + body + '\nprint("ok", flush=True)\n'
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
    env.pop("TRITON_INTERPRET", None)
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return f"{name}: timeout after {timeout:.0f} s"
    lines = (out.stdout + out.stderr).strip().splitlines()
    if out.returncode < 0 and gdb:  # killed by a signal: where, natively
        return (f"{name}: killed by signal {-out.returncode}; backtrace:\n"
                + native_backtrace(code, env, timeout))
    fault = next((ln for ln in lines if ln.startswith("FAULT in")), None)
    if out.returncode == 0 and lines and lines[-1] == "ok":
        verdict = "ok"
    elif fault:
        verdict = fault
    else:
        where = [ln.strip() for ln in lines if ln.strip().startswith("File ") and ROOT in ln]
        verdict = (lines[-1] if lines else f"exit {out.returncode}") + (
            f"  [{where[-1]}]" if where else "")
    return f"{name}: {verdict}  ({time.perf_counter() - t0:.1f} s)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--probe", action="append", help="run probes whose name contains this")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per probe")
    p.add_argument("--list", action="store_true", help="list the probes and exit")
    args = p.parse_args(argv)
    selected = {n: b for n, b in probes().items()
                if not args.probe or any(s in n for s in args.probe)}
    if args.list:
        print("\n".join(selected))
        return 0
    faults = 0
    for name, body in selected.items():
        line = run_probe(name, body, args.timeout)
        faults += ": ok " not in line
        print(line, flush=True)
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main())
