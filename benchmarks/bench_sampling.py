"""Anchor sampling (and, later, the memory-bank update) against the 2021 release's loops.

    python benchmarks/bench_sampling.py                    # CPU, perf_counter medians
    python benchmarks/bench_sampling.py --device cuda      # CUDA events
    python benchmarks/bench_sampling.py --json out.json

Side by side in one run, on the same inputs: ``loop-2021`` (``sample_anchors_loop_2021``
below: Python loops over images and classes with ``.nonzero()`` and a CPU ``randperm`` per
(image, class), the release's ``_hard_anchor_sampling`` with DESIGN.md §2's rule) and
``pixcontrast-<backend>`` (``pixcontrast.sampling.sample_anchors``, fixed-shape and
sync-free). Both produce the same fixed-capacity ``(indices, labels)`` format.

Hook for other ops: a workload is ``WORKLOADS[name] = (make_inputs, {provider: fn})``;
add the memory-bank update (baseline loop + ``MemoryBank.update``) as another entry of
``WORKLOADS`` and it is timed and tabled the same way.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

from pixcontrast.sampling import sample_anchors  # noqa: E402

IGNORE = 255


# --------------------------------------------------------------------------------------
# Baseline: the 2021 release's procedure (loops, .nonzero(), CPU randperm), same rule
# --------------------------------------------------------------------------------------

def sample_anchors_loop_2021(labels: torch.Tensor, predictions: torch.Tensor, *,
                             max_samples: int = 1024, max_views: int = 100,
                             ignore_index: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """DESIGN.md §2's rule the way the 2021 release computes it (host loops, syncs).

    Same outputs' format as ``sample_anchors``: ``indices [max_samples]`` flat into
    ``B·h·w`` (-1 unused) and ``labels [max_samples]`` (``ignore_index`` unused).
    """
    b, h, w = labels.shape
    hw = h * w
    y = labels.reshape(b, hw)
    y_hat = predictions.reshape(b, hw)
    pairs = []
    for i in range(b):
        this_y = y[i]
        for c in torch.unique(this_y).tolist():
            if c != ignore_index and (this_y == c).sum().item() > max_views:
                pairs.append((i, c))
    total = len(pairs)
    idx_out = torch.full((max_samples,), -1, dtype=torch.int64)
    lab_out = torch.full((max_samples,), ignore_index, dtype=torch.int64)
    if total == 0:
        return idx_out.to(labels.device), lab_out.to(labels.device)
    if total > max_samples:  # the release has no such step (it crashes with n_view = 0)
        keep = sorted(torch.randperm(total)[:max_samples].tolist())
        pairs = [pairs[k] for k in keep]
    n_view = max(min(max_samples // total, max_views), 1)
    row = 0
    for i, c in pairs:
        this_y, this_y_hat = y[i], y_hat[i]
        hard = ((this_y == c) & (this_y_hat != c)).nonzero().flatten()
        easy = ((this_y == c) & (this_y_hat == c)).nonzero().flatten()
        n_hard, n_easy = hard.numel(), easy.numel()
        if n_hard >= n_view / 2 and n_easy >= n_view / 2:
            keep_hard = n_view // 2
            keep_easy = n_view - keep_hard
        elif n_hard >= n_view / 2:
            keep_easy = n_easy
            keep_hard = n_view - keep_easy
        else:
            keep_hard = n_hard
            keep_easy = n_view - keep_hard
        hard = hard[torch.randperm(n_hard, device="cpu")[:keep_hard].to(hard.device)]
        easy = easy[torch.randperm(n_easy, device="cpu")[:keep_easy].to(easy.device)]
        sel = torch.cat([hard, easy]).cpu() + i * hw
        idx_out[row:row + n_view] = sel
        lab_out[row:row + n_view] = c
        row += n_view
    return idx_out.to(labels.device), lab_out.to(labels.device)


# --------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------

def make_label_maps(batch: int, h: int, w: int, classes: int, device: str,
                    ignore_fraction: float = 0.05, error_rate: float = 0.2):
    """Cityscapes-like maps: class regions (a coarse random map, nearest-upsampled 16x),
    ~5% ignore pixels, predictions wrong on ~20% of pixels."""
    coarse = torch.randint(0, classes, (batch, max(h // 16, 1), max(w // 16, 1)))
    labels = coarse.repeat_interleave(16, 1).repeat_interleave(16, 2)[:, :h, :w]
    labels = torch.where(torch.rand(labels.shape) < ignore_fraction, IGNORE, labels)
    preds = torch.where(torch.rand(labels.shape) < error_rate,
                        torch.randint(0, classes, labels.shape), labels)
    preds = torch.where(labels == IGNORE, torch.randint(0, classes, labels.shape), preds)
    return labels.to(device).contiguous(), preds.to(device).contiguous()


def gpu_backends(device: str) -> list[str]:
    """Kernel backends of sampling and the bank update that run on ``device``."""
    if device != "cuda":
        return []
    from pixcontrast._backends import missing_cuda_kernels
    missing = missing_cuda_kernels(("sampling_run_histogram", "sampling_select_scatter",
                                    "bank_write"))
    return ["triton"] + (["cuda"] if missing == [] else [])


def sampling_workload(device: str, quick: bool):
    b, h, w = (2, 64, 128) if quick else (8, 128, 256)
    labels, preds = make_label_maps(b, h, w, 19, device)
    kw = dict(max_samples=1024, max_views=100, ignore_index=IGNORE)
    providers: dict[str, Callable[[], object]] = {
        "loop-2021": lambda: sample_anchors_loop_2021(labels, preds, **kw),
        "pixcontrast-torch": lambda: sample_anchors(labels, preds, backend="torch", **kw),
    }
    for backend in gpu_backends(device):
        providers[f"pixcontrast-{backend}"] = (
            lambda backend=backend: sample_anchors(labels, preds, backend=backend, **kw))
    shape = f"B={b} {h}x{w} K=19 N=1024 V<=100"
    return shape, providers


def _bank_inputs(device: str, quick: bool):
    from pixcontrast.memory_bank import MemoryBank
    from bench_memory_bank import memory_bank_update_loop_2021

    b, h, w, d, size = (2, 64, 128, 64, 500) if quick else (8, 128, 256, 256, 5000)
    labels, preds = make_label_maps(b, h, w, 19, device)
    embed = torch.randn(b, d, h, w, device=device)

    def bank():
        return MemoryBank(19, d, size=size, pixels_per_update=10,
                          ignore_index=IGNORE).to(device)

    loop_bank = bank()

    def loop_update():
        memory_bank_update_loop_2021(loop_bank.features, loop_bank.labels, loop_bank.pointers,
                                     embed, labels, 10, ignore_index=IGNORE)

    return (b, h, w, d), labels, preds, embed, bank, loop_update


def bank_update_workload(device: str, quick: bool):
    (b, h, w, d), labels, _, embed, bank, loop_update = _bank_inputs(device, quick)
    ours = bank()
    providers = {"loop-2021": loop_update,
                 "pixcontrast-torch": lambda: ours.update(embed, labels, backend="torch")}
    for backend in gpu_backends(device):
        providers[f"pixcontrast-{backend}"] = (
            lambda backend=backend: ours.update(embed, labels, backend=backend))
    return f"B={b} {h}x{w} D={d} K=19 ppu=10", providers


def sampling_and_update_workload(device: str, quick: bool):
    """One loss step's bookkeeping: sample the anchors, then enqueue the batch."""
    (b, h, w, d), labels, preds, embed, bank, loop_update = _bank_inputs(device, quick)
    kw = dict(max_samples=1024, max_views=100, ignore_index=IGNORE)
    ours = bank()

    def loop():
        sample_anchors_loop_2021(labels, preds, **kw)
        loop_update()

    def fused(backend):
        def step():
            sample_anchors(labels, preds, backend=backend, **kw)
            ours.update(embed, labels, backend=backend)
        return step

    providers = {"loop-2021": loop, "pixcontrast-torch": fused("torch")}
    for backend in gpu_backends(device):
        providers[f"pixcontrast-{backend}"] = fused(backend)
    return f"B={b} {h}x{w} D={d} K=19 N=1024 ppu=10", providers


# name -> builder(device, quick) -> (shape description, {provider: zero-arg callable}).
WORKLOADS: dict[str, Callable[[str, bool], tuple[str, dict[str, Callable[[], object]]]]] = {
    "sampling": sampling_workload,
    "bank-update": bank_update_workload,
    "sampling+update": sampling_and_update_workload,
}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", action="append", choices=sorted(WORKLOADS),
                   help="repeatable; default: all")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--json", help="write the records here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")

    records = []
    for name in args.workload or list(WORKLOADS):
        torch.manual_seed(0)
        shape, providers = WORKLOADS[name](args.device, args.quick)
        base = None
        for provider, fn in providers.items():
            timer = H.time_cuda if args.device == "cuda" else H.time_cpu
            t = timer(fn, args.repeats)
            base = base or t["median"]
            records.append({"workload": name, "shape": shape, "provider": provider,
                            "median_ms": t["median"], "p20_ms": t["p20"], "p80_ms": t["p80"],
                            "speedup": base / t["median"]})
    columns = [("workload", "workload"), ("shape", "shape"), ("provider", "provider"),
               ("median ms", "median_ms"), ("p20 ms", "p20_ms"), ("p80 ms", "p80_ms"),
               ("speed-up vs loop-2021", "speedup")]
    env = H.environment(args.device)
    print(f"{env['device_name']}, {env['cpu_threads']} threads, torch {env['torch']}, "
          f"triton {env['triton']}, commit {env['commit']}, "
          f"{datetime.date.today().isoformat()}\n")
    print(H.markdown_table(records, columns))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "records": records}, f, indent=1)
    return records


if __name__ == "__main__":
    main()
