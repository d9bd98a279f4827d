"""Anchor sampling, and one step's bookkeeping, against the 2021 release's loops.

    python benchmarks/bench_sampling.py                    # CPU, perf_counter medians
    python benchmarks/bench_sampling.py --device cuda      # CUDA events
    python benchmarks/bench_sampling.py --quick            # small sizes, seconds
    python benchmarks/bench_sampling.py --workload sampling --json out.json

Workloads (``--workload``, repeatable; default both), on 8 Cityscapes-like label maps of
128×256 with 19 classes, ``max_samples=1024``, ``max_views=100``:

* ``sampling``: ``loop-2021`` (``pixcontrast.baselines.sample_anchors_loop_2021``: Python
  loops over images and classes with ``.nonzero()`` and a CPU ``randperm`` per (image,
  class), the release's ``_hard_anchor_sampling`` with docs/design.md §2.5's rule) against
  ``pixcontrast-<backend>`` (``pixcontrast.sampling.sample_anchors``, fixed-shape and
  sync-free). Both produce the same fixed-capacity ``(indices, labels)`` format.
* ``sampling+update``: one loss step's bookkeeping, sample the anchors then enqueue the
  batch (D = 256, bank size 5000, ``pixels_per_update=10``): the two loops of 2021
  (``pixcontrast.baselines``) against ``sample_anchors`` then ``MemoryBank.update`` with
  the same backend. The update alone is benchmarks/bench_memory_bank.py's.

Providers: ``loop-2021``, ``pixcontrast-torch``, and on CUDA ``pixcontrast-triton`` and
``pixcontrast-cuda`` (when the extension has the kernels); for ``sampling+update`` also
``pixcontrast-<backend>-graph``, the step captured once in a CUDA graph and replayed (issue
17's target: both together under 0.2 ms, eager and graphed). Median and 20th/80th
percentiles of ``--repeats`` runs; speed-up against ``loop-2021``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

from pixcontrast.baselines import (  # noqa: E402
    memory_bank_update_loop_2021, sample_anchors_loop_2021)
from pixcontrast.memory_bank import BACKENDS as BANK_BACKENDS  # noqa: E402
from pixcontrast.memory_bank import MemoryBank  # noqa: E402
from pixcontrast.sampling import BACKENDS as SAMPLING_BACKENDS  # noqa: E402
from pixcontrast.sampling import sample_anchors  # noqa: E402
KW = dict(max_samples=1024, max_views=100, ignore_index=H.LABEL_IGNORE)
PPU = 10


def sampling_workload(device: str, quick: bool):
    b, h, w, _, _ = H.STEP_SIZES[quick]
    labels, preds = H.label_maps(b, h, w, H.CLASSES, device)
    providers = {
        "loop-2021": lambda: sample_anchors_loop_2021(labels, preds, **KW),
        "pixcontrast-torch": lambda: sample_anchors(labels, preds, backend="torch", **KW),
    }
    for backend in H.kernel_backends(device, SAMPLING_BACKENDS):
        providers[f"pixcontrast-{backend}"] = (
            lambda backend=backend: sample_anchors(labels, preds, backend=backend, **KW))
    return f"B={b} {h}x{w} K={H.CLASSES} N=1024 V<=100", providers


def sampling_and_update_workload(device: str, quick: bool):
    """One loss step's bookkeeping: sample the anchors, then enqueue the batch."""
    b, h, w, d, size = H.STEP_SIZES[quick]
    labels, preds = H.label_maps(b, h, w, H.CLASSES, device)
    embed = torch.randn(b, d, h, w, device=device)

    def bank():
        return MemoryBank(H.CLASSES, d, size=size, pixels_per_update=PPU,
                          ignore_index=H.LABEL_IGNORE).to(device)

    loop_bank, ours = bank(), bank()

    def loop():
        sample_anchors_loop_2021(labels, preds, **KW)
        memory_bank_update_loop_2021(loop_bank.features, loop_bank.labels, loop_bank.pointers,
                                     embed, labels, PPU, ignore_index=H.LABEL_IGNORE)

    def fused(backend):
        def step():
            sample_anchors(labels, preds, backend=backend, **KW)
            ours.update(embed, labels, backend=backend)
        return step

    def graphed(backend):
        """The step captured once in a CUDA graph (issue 17's second number): replays."""
        step = fused(backend)
        step()  # warm-up: Triton compiles, the completion counters are allocated
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return graph.replay

    providers = {"loop-2021": loop, "pixcontrast-torch": fused("torch")}
    for backend in H.kernel_backends(device, SAMPLING_BACKENDS, BANK_BACKENDS):
        providers[f"pixcontrast-{backend}"] = fused(backend)
        if device == "cuda":
            providers[f"pixcontrast-{backend}-graph"] = graphed(backend)
    return f"B={b} {h}x{w} D={d} K={H.CLASSES} N=1024 ppu={PPU}", providers


# name -> builder(device, quick) -> (shape description, {provider: zero-arg callable}).
WORKLOADS = {
    "sampling": sampling_workload,
    "sampling+update": sampling_and_update_workload,
}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", action="append", choices=list(WORKLOADS),
                   help="repeatable; default: all (the bank update alone: "
                        "bench_memory_bank.py)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--json", help="write the records here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")
    names = list(dict.fromkeys(args.workload or WORKLOADS))
    workloads = {n: (lambda n=n: WORKLOADS[n](args.device, args.quick)) for n in names}
    records = H.time_workloads(workloads, args.device, args.repeats)
    H.report_workloads(records, args.device, args.json)
    return records


if __name__ == "__main__":
    main()
