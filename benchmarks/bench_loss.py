"""Fused pixel-contrast loss against the formulation everyone copies today.

    python benchmarks/bench_loss.py                       # paper-bank + paper-mem-config
    python benchmarks/bench_loss.py --quick               # small sizes, ~1 minute
    python benchmarks/bench_loss.py --workload batch --json out.json

Every provider runs in its own process (peak memory is its own), forward and
forward+backward, several repeats, median and 20th/80th percentiles. ``unfused`` is the
2021 release's dense formulation (pixcontrast.reference.unfused_pixel_contrast);
``pixcontrast-<backend>`` is fused_pixel_contrast. FLOPs count 4·N·M·D for forward +
backward against a detached bank (two GEMMs of the logits' size in each direction).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

# name: (N anchors, M bank rows or None for self-contrast, D, classes)
WORKLOADS = {
    "paper-bank": (1024, 19 * 2 * 5000, 256, 19),
    "paper-mem-config": (120, 19 * 2 * 5000, 256, 19),
    "batch": (1024, None, 256, 19),
}
QUICK = {
    "paper-bank": (256, 19 * 2 * 500, 256, 19),
    "paper-mem-config": (120, 19 * 2 * 500, 256, 19),
    "batch": (512, None, 256, 19),
}
DEFAULT_WORKLOADS = ["paper-bank", "paper-mem-config"]


def make_inputs(n: int, m: int | None, d: int, classes: int, dtype: torch.dtype, device: str):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (n,), generator=g)
    anchors = torch.randn(n, d, generator=g).to(device=device, dtype=dtype)
    anchors.requires_grad_()
    if m is None:
        return anchors, labels.to(device), None, None
    # Class-sorted, as the memory bank stores it.
    bank_labels = torch.arange(classes).repeat_interleave((m + classes - 1) // classes)[:m]
    bank = torch.randn(m, d, generator=g).to(device=device, dtype=dtype)
    return anchors, labels.to(device), bank, bank_labels.to(device)


def loss_fn(provider: str):
    if provider == "unfused":
        from pixcontrast.reference import unfused_pixel_contrast
        return unfused_pixel_contrast
    from pixcontrast.ops import fused_pixel_contrast
    backend = provider.removeprefix("pixcontrast-")
    return lambda *args: fused_pixel_contrast(*args, backend=backend)


def child(spec: dict) -> dict:
    """Measure one (workload, provider, dtype) in this process."""
    device, repeats = spec["device"], spec["repeats"]
    dtype = getattr(torch, spec["dtype"])
    a, y, c, z = make_inputs(*spec["shape"], dtype, device)
    fn = loss_fn(spec["provider"])

    def fwd():
        with torch.no_grad():
            return fn(a, y, c, z)

    def fwd_bwd():
        a.grad = None
        fn(a, y, c, z).backward()

    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fwd_bwd()
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        timer = H.time_cuda
    else:
        base_kb = H.reset_peak_rss()
        fwd_bwd()  # first call: its peak counts, one-time allocations included
        peak_mb = (H.peak_rss_kb() - base_kb) / 1024
        timer = H.time_cpu
    t_fb = timer(fwd_bwd, repeats, warmup=0 if device == "cpu" else 3)
    t_f = timer(fwd, repeats, warmup=0 if device == "cpu" else 3)
    return {"status": "ok", "fwd_ms": t_f["median"], "fwd_p20_ms": t_f["p20"],
            "fwd_p80_ms": t_f["p80"], "fwd_bwd_ms": t_fb["median"],
            "fwd_bwd_p20_ms": t_fb["p20"], "fwd_bwd_p80_ms": t_fb["p80"],
            "peak_mem_mb": peak_mb}


def gemm_rate_tflops(device: str, dtype: torch.dtype, n: int = 1024, d: int = 256,
                     t: int = 16384) -> float:
    """The device's GEMM rate at the loss's shape ([N, D] × [D, T]), measured here.

    The best of 10 runs: the roofline is what the machine can do, and on a shared machine
    the median can be dragged down by a neighbour's burst.
    """
    a = torch.randn(n, d, device=device).to(dtype)
    b = torch.randn(t, d, device=device).to(dtype)
    out = torch.empty(n, t, device=device, dtype=dtype)
    timer = H.time_cuda if device == "cuda" else H.time_cpu
    ms = timer(lambda: torch.mm(a, b.T, out=out), repeats=10, warmup=2)["min"]
    return 2 * n * t * d / (ms * 1e-3) / 1e12


def providers_for(device: str) -> list[str]:
    from pixcontrast.ops import not_supported_reasons
    out = ["unfused"]
    for backend in ("cpu", "triton", "cuda"):
        probe = torch.empty(1, 8, device=device)
        if not not_supported_reasons(backend, probe):
            out.append(f"pixcontrast-{backend}")
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", action="append", choices=sorted(WORKLOADS),
                   help=f"repeatable; default {' '.join(DEFAULT_WORKLOADS)}")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", action="append", choices=["float32", "bfloat16"],
                   help="repeatable; default float32 and bfloat16")
    p.add_argument("--quick", action="store_true", help="small sizes (CI and smoke tests)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per provider")
    p.add_argument("--json", help="write the records here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return []

    workloads = args.workload or DEFAULT_WORKLOADS
    dtypes = args.dtype or ["float32", "bfloat16"]
    sizes = QUICK if args.quick else WORKLOADS
    repeats = args.repeats or (3 if args.device == "cpu" else 20)
    env = H.environment(args.device)
    gemm = {dt: gemm_rate_tflops(args.device, getattr(torch, dt)) for dt in dtypes}
    print(f"# {env['device_name']} · torch {env['torch']} · triton {env['triton']} · "
          f"{env['cpu_threads']} threads · commit {env['commit']}", file=sys.stderr)
    print("# measured GEMM rate: " + ", ".join(f"{dt} {r:.2f} TFLOP/s"
                                               for dt, r in gemm.items()), file=sys.stderr)
    records = []
    for wl in workloads:
        n, m, d, k = sizes[wl]
        unfused_ms = None  # the 2021 formulation runs in float32 whatever the input dtype
        for dt in dtypes:
            for prov in providers_for(args.device):
                if prov == "unfused" and dt != "float32":
                    continue  # the 2021 formulation casts to float32 itself
                print(f"… {wl} {prov} {dt}", file=sys.stderr, flush=True)
                spec = {"shape": [n, m, d, k], "provider": prov, "dtype": dt,
                        "device": args.device, "repeats": repeats}
                res = H.run_child(os.path.abspath(__file__), spec, args.timeout)
                rec = {"workload": wl, "provider": prov, "dtype": dt, "device": args.device,
                       "N": n, "M": m if m is not None else n, "D": d,
                       "fwd_ms": None, "fwd_bwd_ms": None, "peak_mem_mb": None, **res}
                if rec["status"] == "ok":
                    flops = 4 * n * rec["M"] * d
                    rec["tflops"] = flops / (rec["fwd_bwd_ms"] * 1e-3) / 1e12
                    rec["roofline_fraction"] = rec["tflops"] / gemm[dt]
                    if prov == "unfused":
                        unfused_ms = rec["fwd_bwd_ms"]
                    rec["speedup_vs_unfused"] = (unfused_ms / rec["fwd_bwd_ms"]
                                                 if unfused_ms else None)
                rec.update(gemm_tflops=gemm[dt], **env)
                records.append(rec)
    cols = [("workload", "workload"), ("provider", "provider"), ("dtype", "dtype"),
            ("N", "N"), ("M", "M"), ("fwd ms", "fwd_ms"), ("fwd+bwd ms", "fwd_bwd_ms"),
            ("peak extra MB", "peak_mem_mb"), ("TFLOP/s", "tflops"),
            ("of GEMM rate", "roofline_fraction"), ("speed-up", "speedup_vs_unfused"),
            ("status", "status")]
    print(H.markdown_table(records, cols))
    if args.json:
        meta = {"date": datetime.date.today().isoformat()}
        with open(args.json, "w") as f:
            json.dump([{**r, **meta} for r in records], f, indent=1)
    return records


if __name__ == "__main__":
    main()
