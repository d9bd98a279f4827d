"""Fused pixel-contrast loss against the formulation everyone copies today.

    python benchmarks/bench_loss.py                       # paper-bank + paper-mem-config
    python benchmarks/bench_loss.py --quick               # small sizes, about a minute
    python benchmarks/bench_loss.py --workload sweep --plot sweep.png --json sweep.json

Providers, side by side in one run: ``unfused`` (the 2021 release's dense formulation,
pixcontrast.reference.unfused_pixel_contrast), ``unfused-compiled`` (the same under
torch.compile) and ``pixcontrast-<backend>`` for every fused backend that runs on the
device, in float32 and bfloat16 (the unfused formulation casts to float32 itself, so it is
run once per workload and is every dtype's baseline).

Peak extra memory comes from one call in a fresh process per provider (the CUDA
allocator's peak on GPU, the peak RSS on CPU); a provider that runs out of memory or time
there is recorded with that status. Times are then taken in this process with the
providers alternating, repeat by repeat, so drift hits all alike: median and 20th/80th
percentiles of CUDA events on GPU, perf_counter on CPU. FLOPs: 4·N·M·D for forward +
backward against a detached bank (two GEMMs of the logits' size); 8·N²·D in self-contrast
(the column pass of backward adds two more). The roofline is the device's GEMM rate at the
loss's shape, measured in the same run; for the small-N workload the time to read the
bank twice at the measured copy bandwidth is reported too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

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
SWEEP_M = [10_000, 30_000, 100_000, 300_000, 1_000_000, 2_000_000]
QUICK_SWEEP_M = [2_000, 6_000, 20_000]
ALL_WORKLOADS = [*WORKLOADS, "sweep", "sampling"]
DEFAULT_WORKLOADS = ["paper-bank", "paper-mem-config"]
SLOW_CALL_MS = 5_000  # providers slower than this per call are timed with fewer repeats


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
    if provider.startswith("unfused"):
        from pixcontrast.reference import unfused_pixel_contrast
        if provider == "unfused-compiled":
            return torch.compile(unfused_pixel_contrast)
        return unfused_pixel_contrast
    from pixcontrast.ops import fused_pixel_contrast
    backend = provider.removeprefix("pixcontrast-")
    return lambda *args: fused_pixel_contrast(*args, backend=backend)


def step_fns(provider: str, shape: list, dtype: str, device: str, cache: dict | None = None):
    key = (tuple(shape), dtype)
    if cache is None or key not in cache:
        inputs = make_inputs(*shape, getattr(torch, dtype), device)
        if cache is not None:
            cache[key] = inputs
    a, y, c, z = cache[key] if cache is not None else inputs
    fn = loss_fn(provider)

    def fwd():
        with torch.no_grad():
            return fn(a, y, c, z)

    def fwd_bwd():
        a.grad = None
        fn(a, y, c, z).backward()

    return fwd, fwd_bwd


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def child(spec: dict) -> dict:
    """Peak extra memory and the time of one forward+backward, in a fresh process."""
    device = spec["device"]
    fwd, fwd_bwd = step_fns(spec["provider"], spec["shape"], spec["dtype"], device)
    try:
        if spec["provider"] == "unfused-compiled":
            fwd_bwd()  # compile first; its memory is not the loss's
        if device == "cuda":
            sync(device)
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            base_kb = H.reset_peak_rss()
        t0 = time.perf_counter()
        fwd_bwd()  # for eager providers the first call: one-time allocations count
        sync(device)
        ms = (time.perf_counter() - t0) * 1e3
    except torch.OutOfMemoryError as exc:
        return {"status": "oom", "error": str(exc).splitlines()[0]}
    except Exception as exc:  # noqa: BLE001  (recorded, not raised: the table goes on)
        status = "unsupported" if spec["provider"] == "unfused-compiled" else "error"
        return {"status": status, "error": f"{type(exc).__name__}: {exc}"[:300]}
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = (H.peak_rss_kb() - base_kb) / 1024
    return {"status": "ok", "peak_mem_mb": peak, "first_call_ms": ms}


def available_memory_mb(device: str) -> float:
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return free / 2**20
    with open("/proc/meminfo") as f:
        info = {ln.split(":")[0]: int(ln.split()[1]) for ln in f}
    return info["MemAvailable"] / 1024


def predicted_peak_mb(provider: str, n: int, m: int) -> float:
    """Peak of the dense formulations, from measurements on the 2-core dev machine."""
    if provider == "unfused":  # ~10 N×M float32 temporaries (6.9 GB at 1024 × 190 000)
        return 10 * n * m * 4 / 2**20
    if provider == "unfused-compiled":  # ~2.3 of them once fused (2.6 GB at 1024 × 300 000)
        return 2.3 * n * m * 4 / 2**20
    return 0.0


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


def copy_bandwidth_gbs(device: str, mb: int = 512) -> float:
    """Read+write bandwidth of a large copy (bytes moved / time), best of 5."""
    src = torch.empty(mb * 2**20, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    timer = H.time_cuda if device == "cuda" else H.time_cpu
    ms = timer(lambda: dst.copy_(src), repeats=5, warmup=1)["min"]
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def providers_for(device: str) -> list[str]:
    from pixcontrast.ops import not_supported_reasons
    out = ["unfused", "unfused-compiled"]
    probe = torch.empty(1, 8, device=device)
    out += [f"pixcontrast-{b}" for b in ("cpu", "triton", "cuda")
            if not not_supported_reasons(b, probe)]
    return out


def loss_cases(args, sizes) -> list[dict]:
    """(workload, shape, provider, dtype) records to measure, before measuring."""
    cases = []
    shapes = []
    for wl in args.workload:
        if wl == "sweep":
            n, _, d, k = sizes["paper-bank"]
            shapes += [(wl, (n, m, d, k)) for m in (QUICK_SWEEP_M if args.quick else SWEEP_M)]
        elif wl != "sampling":
            shapes.append((wl, sizes[wl]))
    for wl, (n, m, d, k) in shapes:
        for prov in providers_for(args.device):
            for dt in (["float32"] if prov.startswith("unfused") else args.dtype):
                cases.append({"workload": wl, "provider": prov, "dtype": dt,
                              "device": args.device, "N": n, "M": m if m is not None else n,
                              "D": d, "self_contrast": m is None, "shape": [n, m, d, k]})
    return cases


def measure_memory(cases: list[dict], args) -> None:
    avail = available_memory_mb(args.device)
    for i, case in enumerate(cases):
        print(f"[{i + 1}/{len(cases)}] memory  {case['workload']} M={case['M']} "
              f"{case['provider']} {case['dtype']}", file=sys.stderr, flush=True)
        need = predicted_peak_mb(case["provider"], case["N"], case["M"])
        if need > 0.8 * avail:
            case.update(status="oom", error=f"predicted ~{need / 1024:.1f} GB, "
                                             f"{avail / 1024:.1f} GB available: not run")
            continue
        spec = {k: case[k] for k in ("provider", "dtype", "device", "shape")}
        case.update(H.run_child(os.path.abspath(__file__), spec, args.timeout))


def measure_time(cases: list[dict], args) -> None:
    """Alternate the providers repeat by repeat, forward+backward then forward."""
    ok = [c for c in cases if c["status"] == "ok"]
    timer = H.time_cuda if args.device == "cuda" else H.time_cpu
    inputs: dict = {}  # one set of inputs per (shape, dtype), shared by the providers
    fns = {id(c): step_fns(c["provider"], c["shape"], c["dtype"], args.device, inputs)
           for c in ok}
    reps = {id(c): (1 if c.get("first_call_ms", 0) > SLOW_CALL_MS else args.repeats)
            for c in ok}
    samples = {id(c): {"fwd": [], "fwd_bwd": []} for c in ok}
    for c in ok:  # warm-up (compilation; allocator pools on GPU) outside the measurement
        if args.device == "cuda" or c["provider"] == "unfused-compiled":
            fns[id(c)][1]()
    for r in range(max(reps.values(), default=0)):
        print(f"timing round {r + 1}/{args.repeats}", file=sys.stderr, flush=True)
        for which, k in (("fwd_bwd", 1), ("fwd", 0)):
            for c in ok:
                if r < reps[id(c)]:
                    t = timer(fns[id(c)][k], repeats=1, warmup=0)
                    samples[id(c)][which].append(t["median"])
    for c in ok:
        for which in ("fwd", "fwd_bwd"):
            q = H.quantiles(samples[id(c)][which])
            c.update({f"{which}_ms": q["median"], f"{which}_p20_ms": q["p20"],
                      f"{which}_p80_ms": q["p80"]})


def sampling_records(args) -> list[dict]:
    from bench_sampling import sampling_and_update_workload
    shape, providers = sampling_and_update_workload(args.device, args.quick)
    timer = H.time_cuda if args.device == "cuda" else H.time_cpu
    samples: dict[str, list[float]] = {p: [] for p in providers}
    for fn in providers.values():
        fn()
    for _ in range(max(args.repeats, 5)):
        for name, fn in providers.items():
            samples[name].append(timer(fn, repeats=1, warmup=0)["median"])
    recs = []
    base = None
    for name in providers:
        q = H.quantiles(samples[name])
        base = base or q["median"]
        recs.append({"workload": "sampling", "provider": name, "dtype": "float32",
                     "device": args.device, "shape_desc": shape, "status": "ok",
                     "fwd_ms": q["median"], "fwd_p20_ms": q["p20"], "fwd_p80_ms": q["p80"],
                     "fwd_bwd_ms": None, "peak_mem_mb": None, "tflops": None,
                     "roofline_fraction": None, "speedup_vs_unfused": base / q["median"]})
    return recs


def derive(cases: list[dict], gemm: dict, bandwidth: float) -> None:
    base = {}
    for c in cases:
        if c["provider"] == "unfused" and c.get("fwd_bwd_ms"):
            base[(c["workload"], c["M"])] = c["fwd_bwd_ms"]
    for c in cases:
        c.setdefault("fwd_ms", None)
        c.setdefault("fwd_bwd_ms", None)
        c.setdefault("peak_mem_mb", None)
        ms = c["fwd_bwd_ms"]
        flops = (8 if c["self_contrast"] else 4) * c["N"] * c["M"] * c["D"]
        c["tflops"] = flops / (ms * 1e-3) / 1e12 if ms else None
        c["gemm_tflops"] = gemm[c["dtype"]]
        c["roofline_fraction"] = c["tflops"] / gemm[c["dtype"]] if ms else None
        b = base.get((c["workload"], c["M"]))
        c["speedup_vs_unfused"] = b / ms if (b and ms) else None
        if not c["self_contrast"]:
            elem = 2 if c["dtype"] == "bfloat16" else 4
            read_twice_ms = 2 * c["M"] * c["D"] * elem / (bandwidth * 1e9) * 1e3
            c["bank_read_twice_ms"] = read_twice_ms
            c["bandwidth_fraction"] = read_twice_ms / ms if ms else None
        del c["shape"]


def plot(records: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if r["workload"] == "sweep"] or [
        r for r in records if r["workload"] != "sampling" and not r.get("self_contrast")]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[str, list[dict]] = {}
    for r in rows:
        series.setdefault(f"{r['provider']} ({r['dtype']})", []).append(r)
    for label, rs in sorted(series.items()):
        ok = sorted((r for r in rs if r["status"] == "ok"), key=lambda r: r["M"])
        if ok:
            ax_t.plot([r["M"] for r in ok], [r["fwd_bwd_ms"] for r in ok], "o-", label=label)
            ax_m.plot([r["M"] for r in ok], [max(r["peak_mem_mb"], 0.1) for r in ok], "o-",
                      label=label)
        for r in rs:
            if r["status"] != "ok":
                ax_t.annotate(r["status"], (r["M"], ax_t.get_ylim()[1]), fontsize=7)
    n = rows[0]["N"] if rows else "?"
    for ax, ylabel in ((ax_t, "forward + backward [ms]"), (ax_m, "peak extra memory [MB]")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"contrast rows M (N = {n}, D = 256)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=7)
    dev = rows[0]["device_name"] if rows else ""
    fig.suptitle(f"pixcontrast vs the unfused formulation — {dev}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", action="append", choices=ALL_WORKLOADS,
                   help=f"repeatable; default {' '.join(DEFAULT_WORKLOADS)}")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", action="append", choices=["float32", "bfloat16"],
                   help="repeatable; default float32 and bfloat16")
    p.add_argument("--quick", action="store_true", help="small sizes (CI and smoke tests)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per provider call")
    p.add_argument("--json", help="write the records here")
    p.add_argument("--plot", help="write a PNG of time and memory against M here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return []
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    args.workload = args.workload or DEFAULT_WORKLOADS
    args.dtype = args.dtype or ["float32", "bfloat16"]
    args.repeats = args.repeats or (3 if args.device == "cpu" else 20)

    env = H.environment(args.device)
    gemm = {dt: gemm_rate_tflops(args.device, getattr(torch, dt)) for dt in args.dtype}
    gemm.setdefault("float32", gemm_rate_tflops(args.device, torch.float32))
    bandwidth = copy_bandwidth_gbs(args.device)
    print(f"# {env['device_name']} · torch {env['torch']} · triton {env['triton']} · "
          f"{env['cpu_threads']} threads · commit {env['commit']}", file=sys.stderr)
    print("# measured GEMM rate: " + ", ".join(f"{dt} {r:.2f} TFLOP/s" for dt, r in
                                               gemm.items())
          + f"; copy bandwidth {bandwidth:.1f} GB/s", file=sys.stderr)

    cases = loss_cases(args, QUICK if args.quick else WORKLOADS)
    measure_memory(cases, args)
    measure_time(cases, args)
    derive(cases, gemm, bandwidth)
    records = cases + (sampling_records(args) if "sampling" in args.workload else [])
    meta = {"date": datetime.date.today().isoformat(), "bandwidth_gbs": bandwidth, **env}
    records = [{**r, **meta} for r in records]

    cols = [("workload", "workload"), ("provider", "provider"), ("dtype", "dtype"),
            ("N", "N"), ("M", "M"), ("fwd ms", "fwd_ms"), ("fwd+bwd ms", "fwd_bwd_ms"),
            ("peak extra MB", "peak_mem_mb"), ("TFLOP/s", "tflops"),
            ("of GEMM rate", "roofline_fraction"), ("speed-up", "speedup_vs_unfused"),
            ("status", "status")]
    print(H.markdown_table(records, cols))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    if args.plot:
        plot(records, args.plot)
    return records


if __name__ == "__main__":
    main()
