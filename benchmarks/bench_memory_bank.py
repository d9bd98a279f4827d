"""Memory-bank update: MemoryBank.update against the 2021 release's enqueue loop.

    python benchmarks/bench_memory_bank.py                    # CPU, paper-size batch
    python benchmarks/bench_memory_bank.py --device cuda      # CUDA events
    python benchmarks/bench_memory_bank.py --quick            # small batch, seconds
    python benchmarks/bench_memory_bank.py --dtype bfloat16 --json out.json

Workload ``bank-update`` (the one place the update alone is timed): 8 Cityscapes-like
label maps of 128×256 with 19 classes, embeddings D = 256, bank size 5000,
``pixels_per_update=10`` (``--quick``: 2 maps of 64×128, D = 64, size 500), the bank
stored in ``--dtype``. Providers:

* ``loop-2021``: ``pixcontrast.baselines.memory_bank_update_loop_2021``, the release's
  procedure (Python loops over images and classes, ``.nonzero()``, a CPU ``randperm`` per
  (image, class), ``int()`` of the pointers) with its defects fixed, so both sides do the
  same work.
* ``pixcontrast-torch``: ``MemoryBank.update(backend="torch")`` (the CPU path).
* ``pixcontrast-triton``, ``pixcontrast-cuda``: the GPU kernels (CUDA only; cuda when the
  extension has them).

Median and 20th/80th percentiles of ``--repeats`` runs: ``time.perf_counter`` on CPU, CUDA
events on GPU; speed-up against ``loop-2021``. Each pixcontrast provider first checks that
its rings agree with the loop's on a small batch (labels, pointers, segment entries).
Sampling, and sampling then update in one step, are bench_sampling.py's.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

from pixcontrast.baselines import memory_bank_update_loop_2021  # noqa: E402
from pixcontrast.memory_bank import BACKENDS as BANK_BACKENDS  # noqa: E402
from pixcontrast.memory_bank import MemoryBank  # noqa: E402

PPU = 10


def check(backend: str, device: str) -> None:
    """The backend's rings agree with the loop's on a small batch (size 7: wrap-around)."""
    d, size = 16, 7
    labels, _ = H.label_maps(2, 32, 64, H.CLASSES, device)
    emb = torch.randn(2, d, 32, 64, device=device)
    ref, ours = (MemoryBank(H.CLASSES, d, size=size, pixels_per_update=PPU,
                            ignore_index=H.LABEL_IGNORE).to(device) for _ in range(2))
    memory_bank_update_loop_2021(ref.features, ref.labels, ref.pointers, emb, labels, PPU,
                                 ignore_index=H.LABEL_IGNORE)
    ours.update(emb, labels, backend=backend)
    what = f"pixcontrast-{backend}"
    assert torch.equal(ref.labels, ours.labels), f"{what}: labels differ from the loop"
    assert torch.equal(ref.pointers, ours.pointers), f"{what}: pointers differ from the loop"
    torch.testing.assert_close(ours.features[:, 0], ref.features[:, 0], rtol=0, atol=1e-5,
                               msg=lambda m: f"{what}: segment entries differ\n{m}")


def bank_update_workload(device: str, quick: bool, dtype: str = "float32"):
    b, h, w, d, size = H.STEP_SIZES[quick]
    labels, _ = H.label_maps(b, h, w, H.CLASSES, device)
    embed = torch.randn(b, d, h, w, device=device)

    def bank():
        return MemoryBank(H.CLASSES, d, size=size, pixels_per_update=PPU,
                          ignore_index=H.LABEL_IGNORE, dtype=getattr(torch, dtype)).to(device)

    loop_bank = bank()
    providers = {"loop-2021": lambda: memory_bank_update_loop_2021(
        loop_bank.features, loop_bank.labels, loop_bank.pointers, embed, labels, PPU,
        ignore_index=H.LABEL_IGNORE)}
    for backend in ["torch", *H.kernel_backends(device, BANK_BACKENDS)]:
        check(backend, device)
        ours = bank()
        providers[f"pixcontrast-{backend}"] = (
            lambda ours=ours, backend=backend: ours.update(embed, labels, backend=backend))
    return f"B={b} {h}x{w} D={d} K={H.CLASSES} size={size} ppu={PPU} bank {dtype}", providers


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="small batch (smoke test)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="bank storage dtype")
    p.add_argument("--json", help="write the records here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")
    records = H.time_workloads(
        {"bank-update": lambda: bank_update_workload(args.device, args.quick, args.dtype)},
        args.device, args.repeats)
    H.report_workloads(records, args.device, args.json)
    return records


if __name__ == "__main__":
    main()
