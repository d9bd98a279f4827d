"""Where the time of one fused loss step (forward + backward) goes, kernel by kernel.

    python benchmarks/profile_loss.py                       # paper-bank, bfloat16, on cuda
    python benchmarks/profile_loss.py --dtype bfloat16 --dtype tf32 --backend triton --md p.md
    python benchmarks/profile_loss.py --device cpu --quick --json prof.json   # CI dry run

For every fused backend that runs on the device (cuda: triton and cuda; cpu: cpu), on one
workload of bench_loss.py (anchors require grad, the bank is detached): a few warm-up
steps, the wall time of a step (CUDA events on GPU, perf_counter on CPU, median of K), then
K steps under torch.profiler. One markdown table per backend: each kernel (GPU: device
time of the CUDA kernels, memcpys and memsets) or op (CPU: self CPU time), calls per step,
µs per step and share of the step (GPU: of its CUDA-event wall time; CPU: of the profiled
steps' wall time), slowest first; then the step's wall time and the kernel launches per
step. A backend that raises gets its error in place of its table, and the others go on.
``--dtype`` (repeatable: a table per backend and mode) takes bench_loss's precision modes
(float32 is strict fp32, tf32 is CUDA only), switched by the same _harness context manager.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402
from bench_loss import QUICK, WORKLOADS, make_inputs, sync  # noqa: E402


NAME_CHARS = 60


def short(name: str, width: int = NAME_CHARS) -> str:
    """Kernel names without "void " and the argument list, cut to ``width`` characters."""
    name = name.removeprefix("void ").replace("(anonymous namespace)::", "")
    depth = 0
    for i in range(len(name) - 1, 0, -1) if name.endswith(")") else ():
        depth += {")": 1, "(": -1}.get(name[i], 0)
        if depth == 0:  # the last balanced (...): a C++ signature's arguments, not "(Device)"
            name = name[:i] if "::" in name[:i] else name
            break
    return name if len(name) <= width else name[:width - 1] + "…"


def _get(evt, *names: str) -> float:
    """The first of ``names`` the event has: device times are named ``*device_time*`` in
    torch ≥ 2.4 (FunctionEvent and FunctionEventAvg alike), ``*cuda_time*`` before."""
    for n in names:
        v = getattr(evt, n, None)
        if v is not None:
            return float(v)
    return 0.0


def profile_backend(backend: str, mode: str, inputs, args) -> dict:
    from pixcontrast.ops import fused_pixel_contrast
    a, y, c, z = inputs

    def step():
        a.grad = None
        fused_pixel_contrast(a, y, c, z, backend=backend).backward()

    cuda = args.device == "cuda"
    timer = H.time_cuda if cuda else H.time_cpu
    with H.precision(mode):
        for _ in range(args.warmup):  # compilation, autotuning, allocator pools
            step()
        wall_ms = timer(step, repeats=args.steps, warmup=0)["median"]
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync(args.device)
            profiled_ms = (time.perf_counter() - t0) * 1e3 / args.steps
    events = prof.key_averages()
    k = args.steps
    if cuda:  # kernels, memcpys and memsets as the device ran them
        dev = [e for e in events if e.device_type == DeviceType.CUDA]
        rows = [(e.key, e.count, _get(e, "self_device_time_total", "self_cuda_time_total"))
                for e in dev]
        launches = sum(e.count for e in dev if not e.key.startswith(("Memcpy", "Memset"))) / k
    else:  # CPU ops by self time (nested ops are not counted twice)
        rows = [(e.key, e.count, float(e.self_cpu_time_total)) for e in events]
        launches = None
    rows = sorted((r for r in rows if r[2] > 0), key=lambda r: -r[2])
    total_us = sum(t for _, _, t in rows) / k
    # Shares of the step: on GPU its wall time by CUDA events (kernel times hardly change
    # under the profiler, the host side does); on CPU the wall time of the profiled steps,
    # whose self times the profiler inflates alike. The rows' sum where that is larger; the
    # rest is idle device time or host time between ops.
    step_us = max((wall_ms if cuda else profiled_ms) * 1e3, total_us)
    return {"backend": backend, "mode": mode, "dtype": H.MODES[mode][0], "status": "ok",
            "wall_ms_per_step": wall_ms,
            "profiled_ms_per_step": profiled_ms, "kernel_launches_per_step": launches,
            "op_calls_per_step": sum(e.count for e in events
                                     if e.device_type == DeviceType.CPU) / k,
            "time_kind": "device" if cuda else "self_cpu", "covered_share": total_us / step_us,
            "rows": [{"name": n, "calls_per_step": cnt / k, "us_per_step": t / k,
                      "share": t / k / step_us} for n, cnt, t in rows]}


def table_md(t: dict, top: int) -> str:
    if t["status"] != "ok":
        return f"### {t['backend']} · {t['mode']}\n\n{t['status']}: {t['error']}"
    what = "kernel" if t["time_kind"] == "device" else "op (self CPU time)"
    rows = [{"name": short(r["name"]), "calls": r["calls_per_step"], "us": r["us_per_step"],
             "share": f"{100 * r['share']:.1f} %"} for r in t["rows"][:top]]
    rest = t["rows"][top:]
    if rest:
        rows.append({"name": f"({len(rest)} more)", "calls": sum(r["calls_per_step"]
                                                                 for r in rest),
                     "us": sum(r["us_per_step"] for r in rest),
                     "share": f"{100 * sum(r['share'] for r in rest):.1f} %"})
    md = H.markdown_table(rows, [(what, "name"), ("calls/step", "calls"),
                                 ("µs/step", "us"), ("share", "share")])
    launches = t["kernel_launches_per_step"]
    return (f"### {t['backend']} · {t['mode']}\n\n{md}\n\n"
            f"step wall time {t['wall_ms_per_step']:.3f} ms "
            f"({'CUDA events' if t['time_kind'] == 'device' else 'perf_counter'}, median of "
            f"the steps; {t['profiled_ms_per_step']:.3f} ms under the profiler) · kernel "
            f"launches per step: {'—' if launches is None else f'{launches:g}'} · op calls "
            f"per step {t['op_calls_per_step']:g} · the rows cover "
            f"{100 * t['covered_share']:.1f} % of the step")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", action="append", choices=["cpu", "triton", "cuda"],
                   help="repeatable; default every fused backend that runs on the device")
    p.add_argument("--workload", choices=list(WORKLOADS), default="paper-bank")
    p.add_argument("--dtype", action="append", choices=list(H.MODES),
                   help="precision mode, repeatable: float32 (strict), tf32 (CUDA only), "
                        "bfloat16 (the default)")
    p.add_argument("--quick", action="store_true", help="small sizes (CI dry run)")
    p.add_argument("--steps", type=int, default=5, help="K profiled steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=25, help="rows per markdown table")
    p.add_argument("--json", help="write the tables here")
    p.add_argument("--md", help="write the markdown here too")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    modes = list(dict.fromkeys(args.dtype or ["bfloat16"]))
    if args.device == "cpu" and "tf32" in modes:
        p.error("--dtype tf32 is a CUDA mode")
    from pixcontrast.infonce import BACKENDS as INFONCE_BACKENDS
    from pixcontrast.ops import not_supported_reasons

    shape = (QUICK if args.quick else WORKLOADS)[args.workload]
    env = H.environment(args.device)
    n, m, d, classes = shape
    head = (f"# profile_loss: {args.workload} N={n} M={m if m is not None else 'self'} D={d} "
            f"{classes} classes · {' '.join(modes)} · {args.device} ({env['device_name']}) · "
            f"torch {env['torch']} · commit {env['commit']} · {args.steps} steps")
    out = {"workload": args.workload, "shape": list(shape), "modes": modes,
           "device": args.device, "steps": args.steps, **env, "tables": [], "skipped": []}
    parts = [head]
    for mode in modes:
        inputs = make_inputs(*shape, getattr(torch, H.MODES[mode][0]), args.device)
        for b in args.backend or INFONCE_BACKENDS.priority[args.device]:
            reasons = not_supported_reasons(b, inputs[0])
            if reasons:
                out["skipped"].append({"backend": b, "mode": mode, "reason": "; ".join(reasons)})
                print(f"# note: {b} {mode} skipped: {'; '.join(reasons)}", file=sys.stderr)
                continue
            print(f"# profiling {b} {mode} ...", file=sys.stderr, flush=True)
            try:
                out["tables"].append(profile_backend(b, mode, inputs, args))
            except Exception as exc:  # noqa: BLE001  (recorded: the other tables go on)
                out["tables"].append({"backend": b, "mode": mode, "status": "error",
                                      "error": f"{type(exc).__name__}: {exc}"[:500]})
                print(f"# {b} {mode} failed: {out['tables'][-1]['error']}", file=sys.stderr)
            parts.append(table_md(out["tables"][-1], args.top))
    md = "\n\n".join(parts) + "\n"
    print(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)
    return out


if __name__ == "__main__":
    sys.exit(1 if any(t["status"] != "ok" for t in main()["tables"]) else 0)
