"""Fused pixel-contrast loss against the formulation everyone copies today.

    python benchmarks/bench_loss.py                       # paper-bank + paper-mem-config
    python benchmarks/bench_loss.py --quick               # small sizes, about a minute
    python benchmarks/bench_loss.py --workload sweep --plot sweep.png --json sweep.json
    python benchmarks/bench_loss.py --dtype tf32 --provider unfused --provider pixcontrast-triton
    python benchmarks/bench_loss.py --variant hardest --variant semi-hard --variant supcon

Providers, side by side in one run: ``unfused`` (the 2021 release's dense formulation,
pixcontrast.baselines.unfused_pixel_contrast), ``unfused-compiled`` (the same under
torch.compile) and ``pixcontrast-<backend>`` for every fused backend that runs on the
device (``--provider``, repeatable, restricts them). Precision modes (``--dtype``,
repeatable): ``float32`` is strict fp32 (TF32 off for the whole call, PyTorch's default:
cuBLAS runs IEEE SGEMM, our CUDA/Triton kernels 3xTF32), ``tf32`` is float32 inputs with
TF32 on during the call (CUDA only), ``bfloat16``; default float32, tf32 and bfloat16 on
CUDA, float32 and bfloat16 on the CPU. Each record has ``mode`` and ``dtype`` (the tensor
dtype: float32 for tf32). The unfused formulation casts to float32 itself, so it runs in the
float32 and tf32 modes only. Speed-up is against ``unfused`` in the same mode (so tf32 rows
against unfused under TF32); bfloat16 rows are against ``unfused`` float32 (strict).

Peak extra memory comes from one call in a fresh process per provider (the CUDA
allocator's peak on GPU, the peak RSS on CPU); a provider that runs out of memory or time
there is recorded with that status. Times are then taken in this process with the
providers alternating, repeat by repeat, so drift hits all alike: median and 20th/80th
percentiles of CUDA events on GPU, perf_counter on CPU. FLOPs: 4·N·M·D for forward +
backward against a detached bank (two GEMMs of the logits' size); 8·N²·D in self-contrast
(the column pass of backward adds two more). The roofline ("of GEMM rate",
``roofline_fraction``) is the rate of the loss's own two GEMMs, S = A·Cᵀ then P·C, at the
row's N and D over a chunk of T columns (4·N·T·D FLOPs), in the GEMM precision that row
actually runs (``gemm_mode``, table GEMM_FOR_MODE), measured in the same run, best of 10. A
row above 1.05 of it gets a warning line: the GEMM measurement does not represent that
row. For the small-N workload the time to read the bank twice at the measured copy
bandwidth is reported too.

``--variant`` (repeatable: ``hardest``, ``semi-hard``, ``supcon``) adds rows
``pixcontrast-<backend>/<variant>``: hard example mining (default K: 1024 negatives, 256
positives) for every fused backend of the mining family (pixcontrast/mining.py,
docs/design.md §2.8) that runs on the device, SupCon without mining for every fused
backend (it runs on the InfoNCE kernels, §1.5). Their TFLOP/s and "of
GEMM rate" still count the 4·N·M·D of one InfoNCE pass (the mining rows compute the logits
four times: three radix-select passes and the take pass), and their speed-up is over the
InfoNCE ``unfused`` baseline, which computes a different loss.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
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
ALL_WORKLOADS = [*WORKLOADS, "sweep"]
DEFAULT_WORKLOADS = ["paper-bank", "paper-mem-config"]
SLOW_CALL_MS = 5_000  # providers slower than this per call are timed with fewer repeats
CHILDREN_AT_ONCE = 4  # memory-measuring processes run concurrently on a GPU
PROVIDERS = ["unfused", "unfused-compiled", "pixcontrast-cpu", "pixcontrast-triton",
             "pixcontrast-cuda"]
# --variant: fused_pixel_contrast keywords of each mining / SupCon row
VARIANTS = {"hardest": {"mining": "hardest"}, "semi-hard": {"mining": "semi-hard"},
            "supcon": {"loss": "supcon"}}
DEFAULT_MODES = {"cuda": ["float32", "tf32", "bfloat16"], "cpu": ["float32", "bfloat16"]}
# The GEMM each precision mode's rows run, for their "of GEMM rate": (device, mode) -> the
# GEMM timed (GEMM_MODES gives its dtype, TF32 state and number of passes). With
# gemm_mode_for(), the one place this is decided.
GEMM_FOR_MODE = {
    ("cuda", "float32"): "float32",  # strict: cuBLAS IEEE SGEMM on CUDA cores (unfused)
    ("cuda", "tf32"): "tf32",  # float32 inputs, TF32 tensor cores
    ("cuda", "bfloat16"): "bfloat16",
    ("cpu", "float32"): "float32",
    # The CPU kernels convert bf16 tiles to fp32 and run fp32 GEMMs (ATen has no CPU bf16
    # GEMM with fp32 output), so a bf16 GEMM rate is one they never use.
    ("cpu", "bfloat16"): "float32",
}
# The fused GPU kernels run strict fp32 as 3xTF32 on the tensor cores (three TF32 products
# per product: docs/design.md §2.3), not as SGEMM: their rate is that of three TF32 GEMM passes.
FUSED_GEMM_FOR_MODE = {("cuda", "float32"): "tf32x3"}
# gemm mode -> (dtype, TF32 on, passes of the two GEMMs per useful FLOP): the precision
# modes once, plus 3xTF32 as three TF32 passes
GEMM_MODES = {**{m: (*H.MODES[m], 1) for m in H.MODES}, "tf32x3": ("float32", True, 3)}


def gemm_mode_for(device: str, provider: str, mode: str) -> str:
    if provider.startswith("pixcontrast-"):
        return FUSED_GEMM_FOR_MODE.get((device, mode), GEMM_FOR_MODE[(device, mode)])
    return GEMM_FOR_MODE[(device, mode)]


GEMM_T = {"cpu": 16_384, "cuda": 65_536}  # columns per timed chunk of the GEMM rate
ROOFLINE_WARN = 1.05


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
        from pixcontrast.baselines import unfused_pixel_contrast
        if provider == "unfused-compiled":
            return torch.compile(unfused_pixel_contrast)
        return unfused_pixel_contrast
    from pixcontrast.ops import fused_pixel_contrast
    backend, _, variant = provider.removeprefix("pixcontrast-").partition("/")
    kwargs = VARIANTS[variant] if variant else {}
    return lambda *args: fused_pixel_contrast(*args, backend=backend, **kwargs)


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
    with H.precision(spec["mode"]):
        return _child(spec)


def _child(spec: dict) -> dict:
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


def gemm_rate_tflops(device: str, gemm_mode: str, n: int, d: int, t: int) -> float:
    """The rate of the loss's own two GEMMs at its shape, measured here, in one mode.

    S = A·Cᵀ ([N, D] × [D, T]) then P·C ([N, T] × [T, D]): 4·N·T·D FLOPs over a chunk of T
    columns, in the dtype and TF32 state of ``gemm_mode`` (``tf32x3``: the two GEMMs three
    times in TF32, the tensor-core work of 3xTF32, counted as 4·N·T·D useful FLOPs). The
    best of 10 runs: the roofline is what the machine can do, and on a shared machine the
    median can be dragged down by a neighbour's burst.
    """
    dtype_name, tf32, passes = GEMM_MODES[gemm_mode]
    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, d, device=device).to(dtype)
    c = torch.randn(t, d, device=device).to(dtype)
    s = torch.empty(n, t, device=device, dtype=dtype)
    o = torch.empty(n, d, device=device, dtype=dtype)

    def two_gemms():
        for _ in range(passes):
            torch.mm(a, c.T, out=s)
            torch.mm(s, c, out=o)

    timer = H.time_cuda if device == "cuda" else H.time_cpu
    with H.tf32_matmul(tf32):
        ms = timer(two_gemms, repeats=10, warmup=2)["min"]
    return 4 * n * t * d / (ms * 1e-3) / 1e12


def gemm_rates(cases: list[dict], device: str) -> dict[tuple, float]:
    """(gemm_mode, N, D) -> TFLOP/s for every GEMM the cases' rows are compared against."""
    keys = sorted({(gemm_mode_for(device, c["provider"], c["mode"]), c["N"], c["D"])
                   for c in cases})
    return {k: gemm_rate_tflops(device, *k, GEMM_T[device]) for k in keys}


def copy_bandwidth_gbs(device: str, mb: int = 512) -> float:
    """Read+write bandwidth of a large copy (bytes moved / time), best of 5."""
    src = torch.empty(mb * 2**20, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    timer = H.time_cuda if device == "cuda" else H.time_cpu
    ms = timer(lambda: dst.copy_(src), repeats=5, warmup=1)["min"]
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def providers_for(device: str, wanted: list[str] | None = None) -> list[str]:
    from pixcontrast.ops import not_supported_reasons
    out = ["unfused", "unfused-compiled"]
    probe = torch.empty(1, 8, device=device)
    from pixcontrast.infonce import BACKENDS
    out += [f"pixcontrast-{b}" for b in BACKENDS.checks
            if b != "torch" and not not_supported_reasons(b, probe)]
    for p in set(wanted or []) - set(out):
        print(f"# note: provider {p} does not run on {device} here: skipped", file=sys.stderr)
    return [p for p in out if wanted is None or p in wanted]


def variant_providers(device: str, base: list[str], variants: list[str]) -> list[str]:
    """``pixcontrast-<backend>/<variant>`` for the fused providers in ``base``: "supcon" for
    every one (SupCon without mining runs on the InfoNCE kernels), the mining variants for
    those whose backend the mining family has and can run on ``device``."""
    from pixcontrast.mining import BACKENDS as MINING_BACKENDS
    probe = torch.empty(1, 8, device=device)
    out = []
    for p in base:
        if not p.startswith("pixcontrast-"):
            continue
        b = p.removeprefix("pixcontrast-")
        mines = b in MINING_BACKENDS.checks and not MINING_BACKENDS.reasons(b, probe.device,
                                                                            probe)
        out += [f"{p}/{v}" for v in variants if v == "supcon" or mines]
    return out


def modes_for(provider: str, modes: list[str]) -> list[str]:
    """The unfused formulation casts to float32 itself: float32 and tf32 modes only (float32
    when neither is asked for, as the baseline of bfloat16)."""
    if provider.startswith("unfused"):
        return [m for m in modes if m != "bfloat16"] or ["float32"]
    return modes


def loss_cases(args, sizes) -> list[dict]:
    """(workload, shape, provider, dtype) records to measure, before measuring."""
    cases = []
    shapes = []
    for wl in args.workload:
        if wl == "sweep":
            n, _, d, k = sizes["paper-bank"]
            shapes += [(wl, (n, m, d, k)) for m in (QUICK_SWEEP_M if args.quick else SWEEP_M)]
        else:
            shapes.append((wl, sizes[wl]))
    base = providers_for(args.device, args.provider)
    base += variant_providers(args.device, base, getattr(args, "variant", None) or [])
    for wl, (n, m, d, k) in shapes:
        for prov in base:
            for mode in modes_for(prov, args.dtype):
                cases.append({"workload": wl, "provider": prov, "mode": mode,
                              "dtype": H.MODES[mode][0], "device": args.device, "N": n,
                              "M": m if m is not None else n, "D": d,
                              "self_contrast": m is None, "shape": [n, m, d, k]})
    return cases


def measure_memory(cases: list[dict], args) -> None:
    """One fresh process per case. On a GPU several run at once (each reads its own
    allocator's peak, so they do not disturb each other's numbers; ~10 s of start-up and
    compilation each would otherwise dominate a GPU session); on the CPU one at a time,
    since peak RSS is per process but the cores are shared with nothing else then."""
    avail = available_memory_mb(args.device)
    todo = []
    for case in cases:
        need = predicted_peak_mb(case["provider"], case["N"], case["M"])
        if need > 0.8 * avail / (CHILDREN_AT_ONCE if args.device == "cuda" else 1):
            case.update(status="oom", error=f"predicted ~{need / 1024:.1f} GB, "
                                             f"{avail / 1024:.1f} GB available: not run")
        else:
            todo.append(case)

    def one(item):
        i, case = item
        print(f"[{i + 1}/{len(todo)}] memory  {case['workload']} M={case['M']} "
              f"{case['provider']} {case['mode']}", file=sys.stderr, flush=True)
        spec = {k: case[k] for k in ("provider", "mode", "dtype", "device", "shape")}
        case.update(H.run_child(os.path.abspath(__file__), spec, args.timeout))

    workers = CHILDREN_AT_ONCE if args.device == "cuda" else 1
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, enumerate(todo)))


def measure_time(cases: list[dict], args) -> None:
    """Alternate the providers repeat by repeat, forward+backward then forward."""
    ok = [c for c in cases if c["status"] == "ok"]
    timer = H.time_cuda if args.device == "cuda" else H.time_cpu
    inputs: dict = {}  # one set of inputs per (shape, dtype), shared by the providers
    fns = {id(c): step_fns(c["provider"], c["shape"], c["dtype"], args.device, inputs)
           for c in ok}
    samples = {id(c): {"fwd": [], "fwd_bwd": []} for c in ok}
    reps = {}
    for c in ok:
        # Warm-up outside the measurement: compilation (forward+backward and forward-only
        # are different kernel specialisations), allocator pools on the GPU. A provider
        # whose warm call is slow gets fewer repeats; the first call in the memory child
        # includes compilation and would misjudge it.
        warm = args.device == "cuda" or c["provider"] == "unfused-compiled"
        with H.precision(c["mode"]):
            if warm:
                fns[id(c)][0]()
            t = timer(fns[id(c)][1], repeats=1, warmup=1 if warm else 0)["median"]
        reps[id(c)] = 1 if t > SLOW_CALL_MS else args.repeats
    for r in range(max(reps.values(), default=0)):
        print(f"timing round {r + 1}/{args.repeats}", file=sys.stderr, flush=True)
        for which, k in (("fwd_bwd", 1), ("fwd", 0)):
            for c in ok:
                if r < reps[id(c)]:
                    with H.precision(c["mode"]):  # TF32 switched outside the timed region
                        t = timer(fns[id(c)][k], repeats=1, warmup=0)
                    samples[id(c)][which].append(t["median"])
    for c in ok:
        for which in ("fwd", "fwd_bwd"):
            q = H.quantiles(samples[id(c)][which])
            c.update({f"{which}_ms": q["median"], f"{which}_p20_ms": q["p20"],
                      f"{which}_p80_ms": q["p80"]})


def derive(cases: list[dict], gemm: dict, bandwidth: float) -> None:
    """TFLOP/s, fraction of the GEMM rate of the row's gemm_mode, speed-up over unfused in the
    same mode (bfloat16: over unfused float32, strict), bank-read time."""
    base = {}
    for c in cases:
        if c["provider"] == "unfused" and c.get("fwd_bwd_ms"):
            base[(c["workload"], c["M"], c["mode"])] = c["fwd_bwd_ms"]
    for c in cases:
        c.setdefault("fwd_ms", None)
        c.setdefault("fwd_bwd_ms", None)
        c.setdefault("peak_mem_mb", None)
        ms = c["fwd_bwd_ms"]
        flops = (8 if c["self_contrast"] else 4) * c["N"] * c["M"] * c["D"]
        c["tflops"] = flops / (ms * 1e-3) / 1e12 if ms else None
        c["gemm_mode"] = gemm_mode_for(c["device"], c["provider"], c["mode"])
        c["gemm_T"] = GEMM_T[c["device"]]
        c["gemm_tflops"] = gemm[(c["gemm_mode"], c["N"], c["D"])]
        c["roofline_fraction"] = c["tflops"] / c["gemm_tflops"] if ms else None
        # Same mode when unfused ran in it, else (bfloat16) unfused float32, strict.
        bm = next((m for m in (c["mode"], "float32") if (c["workload"], c["M"], m) in base),
                  None)
        b = base.get((c["workload"], c["M"], bm))
        c["speedup_vs_unfused"] = b / ms if (b and ms) else None
        c["speedup_baseline_mode"] = bm if c["speedup_vs_unfused"] else None
        if not c["self_contrast"]:
            elem = 2 if c["dtype"] == "bfloat16" else 4
            read_twice_ms = 2 * c["M"] * c["D"] * elem / (bandwidth * 1e9) * 1e3
            c["bank_read_twice_ms"] = read_twice_ms
            c["bandwidth_fraction"] = read_twice_ms / ms if ms else None
        del c["shape"]


def roofline_warnings(records: list[dict]) -> list[str]:
    """A loud line for every row above ROOFLINE_WARN of its GEMM rate (shown, not clamped)."""
    return [f"**!!! WARNING !!!** {r['workload']} M={r['M']} {r['provider']} {r['mode']}: "
            f"{r['tflops']:.3g} TFLOP/s is {r['roofline_fraction']:.2f}× the measured "
            f"{r['gemm_mode']} GEMM rate ({r['gemm_tflops']:.3g} TFLOP/s): the GEMM rate "
            "measurement is NOT representative for this row."
            for r in records if (r.get("roofline_fraction") or 0) > ROOFLINE_WARN]


def plot_layout(records: list[dict]) -> dict:
    """What --plot draws, decided from the records alone.

    With a ``sweep`` (one N, M varied): time and memory against M, one line per provider and
    mode, the sweep's rows only, labelled with the sweep's N and D (other workloads have
    other N or a single M: a line through them would mix shapes). Without one (the default
    paper-bank + paper-mem-config: two N, one M): nothing varies along an axis, so one
    group of bars per workload, labelled with its own N and M, one bar per provider and mode.
    """
    sweep = [r for r in records if r["workload"] == "sweep"]
    if sweep:
        ns, ds = sorted({r["N"] for r in sweep}), sorted({r["D"] for r in sweep})
        return {"kind": "lines", "rows": sweep,
                "xlabel": f"contrast rows M (N = {', '.join(map(str, ns))}, "
                          f"D = {', '.join(map(str, ds))})",
                "left_out": sorted({r["workload"] for r in records} - {"sweep"})}
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["workload"], []).append(r)
    labels = {}
    for wl, rs in groups.items():
        r = rs[0]
        labels[wl] = (f"{wl}\nself-contrast N = {r['N']}, D = {r['D']}" if r["self_contrast"]
                      else f"{wl}\nN = {r['N']}, M = {r['M']:,}, D = {r['D']}")
    return {"kind": "bars", "groups": groups, "group_labels": labels, "left_out": []}


def plot(records: list[dict], path: str) -> dict:
    """Write the PNG (see plot_layout); returns the layout with the plotted points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layout = plot_layout(records)
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.6))
    axes = ((ax_t, "fwd_bwd_ms", "forward + backward [ms]"),
            (ax_m, "peak_mem_mb", "peak extra memory [MB]"))
    for ax, _, _ in axes:
        ax.set_yscale("log")
    points: dict[str, dict[str, list]] = {"fwd_bwd_ms": {}, "peak_mem_mb": {}}
    label_of = lambda r: f"{r['provider']} ({r['mode']})"  # noqa: E731
    # series in the table's order: providers as PROVIDERS lists them, then modes
    order = {label_of(r): (PROVIDERS.index(r["provider"]) if r["provider"] in PROVIDERS
                           else len(PROVIDERS), list(H.MODES).index(r["mode"])
                           if r["mode"] in H.MODES else len(H.MODES), label_of(r))
             for r in records}
    if layout["kind"] == "lines":
        series: dict[str, list[dict]] = {}
        for r in layout["rows"]:
            series.setdefault(label_of(r), []).append(r)
        for label, rs in sorted(series.items(), key=lambda kv: order[kv[0]]):
            ok = sorted((r for r in rs if r["status"] == "ok"), key=lambda r: r["M"])
            for ax, key, _ in axes:
                xy = [(r["M"], max(r[key], 0.1) if key == "peak_mem_mb" else r[key])
                      for r in ok if r[key] is not None]
                points[key][label] = xy
                if xy:
                    ax.plot(*zip(*xy), "o-", label=label)
                for r in rs:
                    if r["status"] != "ok":
                        ax.annotate(r["status"], (r["M"], 0.02),
                                    xycoords=ax.get_xaxis_transform(), fontsize=7)
        for ax, _, _ in axes:
            ax.set_xscale("log")
            ax.set_xlabel(layout["xlabel"])
    else:
        groups = layout["groups"]
        labels = sorted({label_of(r) for rs in groups.values() for r in rs}, key=order.get)
        width = 0.8 / max(len(labels), 1)
        for k, label in enumerate(labels):
            for ax, key, _ in axes:
                xs, ys = [], []
                for g, rs in enumerate(groups.values()):
                    r = next((r for r in rs if label_of(r) == label), None)
                    if r is None:
                        continue
                    x = g - 0.4 + width * (k + 0.5)
                    if r["status"] == "ok" and r[key] is not None:
                        xs.append(x)
                        ys.append(max(r[key], 0.1) if key == "peak_mem_mb" else r[key])
                    elif r["status"] != "ok":
                        ax.text(x, 0.02, r["status"], transform=ax.get_xaxis_transform(),
                                rotation=90, ha="center", va="bottom", fontsize=7)
                points[key][label] = list(zip(xs, ys))
                ax.bar(xs, ys, width, label=label, color=f"C{k}")
                for x, y in zip(xs, ys):  # the value on each bar: log bars are hard to read
                    ax.annotate(f"{y:.3g}" if y < 100 else f"{y:.0f}", (x, y), ha="center",
                                va="bottom", fontsize=6)
        for ax, key, _ in axes:
            ax.set_xticks(range(len(groups)), [layout["group_labels"][wl] for wl in groups],
                          fontsize=8)
            ax.set_xlim(-0.6, len(groups) - 0.4)
            ys = [y for xy in points[key].values() for _, y in xy]
            if ys:  # bars start at the decade below the smallest, so their lengths compare
                ax.set_ylim(10 ** math.floor(math.log10(min(ys))), max(ys) * 2)
    for ax, _, ylabel in axes:
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", axis="y" if layout["kind"] == "bars" else "both",
                alpha=0.3)
    ax_t.legend(fontsize=7)
    dev = records[0]["device_name"] if records else ""
    fig.suptitle(f"pixcontrast vs the unfused formulation — {dev}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {**layout, "points": points}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", action="append", choices=ALL_WORKLOADS,
                   help=f"repeatable; default {' '.join(DEFAULT_WORKLOADS)} (sampling and "
                        "the bank update: bench_sampling.py, bench_memory_bank.py)")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", action="append", choices=list(H.MODES),
                   help="precision mode, repeatable; float32 is strict (TF32 off), tf32 is "
                        "CUDA only; default float32 tf32 bfloat16 on cuda, float32 bfloat16 "
                        "on cpu")
    p.add_argument("--provider", action="append", choices=PROVIDERS,
                   help="repeatable; default every provider that runs on the device")
    p.add_argument("--variant", action="append", choices=list(VARIANTS),
                   help="repeatable: add mining / SupCon rows for the fused backends that "
                        "have them (docs/design.md §2.8)")
    p.add_argument("--quick", action="store_true", help="small sizes (CI and smoke tests)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per provider call")
    p.add_argument("--json", help="write the records here")
    p.add_argument("--plot", help="write a PNG here: time and peak memory against M for the "
                                  "sweep, else bars per workload (its N, M) and provider")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return []
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    args.workload = args.workload or DEFAULT_WORKLOADS
    args.dtype = list(dict.fromkeys(args.dtype or DEFAULT_MODES[args.device]))
    if args.device == "cpu" and "tf32" in args.dtype:
        print("# note: tf32 is a CUDA mode (no CPU path reads the flag): skipped on cpu",
              file=sys.stderr)
        args.dtype.remove("tf32")
        if not args.dtype:
            p.error("--dtype tf32 alone on cpu: nothing to measure")
    args.repeats = args.repeats or (3 if args.device == "cpu" else 20)

    load_at_start = os.getloadavg()  # for the header: before this run adds its own load
    env = H.environment(args.device)
    cases = loss_cases(args, QUICK if args.quick else WORKLOADS)
    gemm = gemm_rates(cases, args.device)
    bandwidth = copy_bandwidth_gbs(args.device)
    # The header goes to stdout with the table (progress lines go to stderr): the machine,
    # what ATen's CPU kernels dispatch to, the load, versions, the GEMM rates and bandwidth.
    print(f"# {env['device_name']} · torch {env['torch']} · triton {env['triton']} · "
          f"{env['cpu_threads']} threads · commit {env['commit']} · "
          f"{datetime.date.today().isoformat()}")
    if args.device == "cpu":
        load = ", ".join(f"{x:.2f}" for x in load_at_start)
        print(f"# CPU: {os.cpu_count()} logical CPUs, ATen CPU capability "
              f"{torch.backends.cpu.get_cpu_capability()}; load average at start {load} "
              "(1, 5, 15 min): other jobs on the cores slow every row")
    print(f"# measured GEMM rate (S = A·Cᵀ then P·C, T = {GEMM_T[args.device]}, best of 10): "
          + ", ".join(f"{m} N={n} D={d} {r:.3g} TFLOP/s" for (m, n, d), r in gemm.items())
          + f"; copy bandwidth {bandwidth:.1f} GB/s")
    print("# GEMM of each mode: " + ", ".join(
        f"{m} → {g}" for (dev, m), g in GEMM_FOR_MODE.items()
        if dev == args.device and m in args.dtype) + "".join(
        f" (fused {m}: {g})" for (dev, m), g in FUSED_GEMM_FOR_MODE.items()
        if dev == args.device and m in args.dtype), flush=True)
    if args.plot and "sweep" in args.workload and len(args.workload) > 1:
        print("# note: --plot draws the sweep against M; "
              + ", ".join(w for w in args.workload if w != "sweep")
              + " (other N or a single M) are in the table and JSON only", file=sys.stderr)

    measure_memory(cases, args)
    measure_time(cases, args)
    derive(cases, gemm, bandwidth)
    meta = {"date": datetime.date.today().isoformat(), "bandwidth_gbs": bandwidth, **env}
    records = [{**r, **meta} for r in cases]

    cols = [("workload", "workload"), ("provider", "provider"), ("mode", "mode"),
            ("dtype", "dtype"),
            ("N", "N"), ("M", "M"), ("fwd ms", "fwd_ms"), ("fwd+bwd ms", "fwd_bwd_ms"),
            ("peak extra MB", "peak_mem_mb"), ("TFLOP/s", "tflops"),
            ("of GEMM rate", "roofline_fraction"), ("speed-up", "speedup_vs_unfused"),
            ("status", "status")]
    print(H.markdown_table(records, cols))
    print("\nSpeed-up: over `unfused` in the same mode; bfloat16 rows over `unfused` float32 "
          "(strict). Of GEMM rate: over the rate of the loss's two GEMMs at the row's N, D in "
          "its gemm_mode (" + ", ".join(f"{m} → {g}" for (dev, m), g in GEMM_FOR_MODE.items()
                                        if dev == args.device)
          + "".join(f"; fused {m} → {g}: three TF32 passes" for (dev, m), g
                    in FUSED_GEMM_FOR_MODE.items() if dev == args.device) + ").")
    for line in roofline_warnings(records):
        print("\n" + line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    if args.plot:
        plot(records, args.plot)
    return records


if __name__ == "__main__":
    main()
