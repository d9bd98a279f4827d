"""Memory-bank update: MemoryBank.update against the 2021 release's enqueue loop.

    python benchmarks/bench_memory_bank.py                    # CPU, paper-size batch
    python benchmarks/bench_memory_bank.py --device cuda      # CUDA events
    python benchmarks/bench_memory_bank.py --quick            # small batch, seconds

Workload (default): 8 images at 128×256, D = 256, 19 classes, size = 5000,
pixels_per_update = 10. Providers:

* ``loop-2021``: ``memory_bank_update_loop_2021``, the release's procedure (Python loops
  over images and classes, ``.nonzero()``, a CPU ``randperm`` per (image, class), ``int()``
  of the pointers) with its defects fixed (pixels of the class, pointer step k, class 0
  kept, ring wrap-around), so both sides do the same work.
* ``pixcontrast-torch``: ``MemoryBank.update(backend="torch")`` (the CPU path).
* ``pixcontrast-triton``: ``MemoryBank.update(backend="triton")`` (CUDA only).

Median (and 20th/80th percentiles) of ``--repeats`` runs: ``time.perf_counter`` on CPU,
CUDA events on GPU. Each provider first checks that its segment rings agree with the
loop's on a small batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

from pixcontrast.memory_bank import MemoryBank  # noqa: E402

PAPER = dict(batch=8, height=128, width=256, dim=256, classes=19, size=5000, ppu=10)
QUICK = dict(batch=4, height=32, width=64, dim=64, classes=19, size=500, ppu=10)


def memory_bank_update_loop_2021(features: torch.Tensor, bank_labels: torch.Tensor,
                                 pointers: torch.Tensor, embeddings: torch.Tensor,
                                 labels: torch.Tensor, pixels_per_update: int,
                                 ignore_index: int = -1) -> None:
    """The 2021 release's ``_dequeue_and_enqueue``, semantics corrected, in place.

    ``features [K, 2, S, D]``, ``bank_labels [K, 2, S]`` int64, ``pointers [K, 2]`` int64
    (the ``MemoryBank`` buffers); ``embeddings [B, D, h, w]``, ``labels [B, h, w]``.
    Host syncs per (image, class): ``unique``, ``nonzero``, ``int(pointer)``.
    """
    num_classes, _, size, dim = features.shape
    for b in range(embeddings.shape[0]):
        feat = embeddings[b].detach().reshape(dim, -1)
        lab = labels[b].reshape(-1)
        for c in torch.unique(lab).tolist():
            if c == ignore_index or not 0 <= c < num_classes:
                continue
            idxs = (lab == c).nonzero().squeeze(1)
            # segment entry
            mean = feat[:, idxs].float().mean(1)
            ptr = int(pointers[c, 0])
            features[c, 0, ptr] = F.normalize(mean, dim=0).to(features.dtype)
            bank_labels[c, 0, ptr] = c
            pointers[c, 0] = (ptr + 1) % size
            # pixel entries: k random pixels of the class (the release took them from the
            # whole image and stepped the pointer by 1)
            perm = torch.randperm(idxs.shape[0])
            k = min(idxs.shape[0], pixels_per_update)
            pix = feat[:, idxs[perm[:k].to(idxs.device)]].T.float()
            ptr = int(pointers[c, 1])
            slots = (ptr + torch.arange(k, device=features.device)) % size
            features[c, 1, slots] = F.normalize(pix, dim=1).to(features.dtype)
            bank_labels[c, 1, slots] = c
            pointers[c, 1] = (ptr + k) % size


def make_batch(cfg: dict, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(cfg["batch"], cfg["dim"], cfg["height"], cfg["width"], generator=g)
    # Blocky labels (a few regions per class per image), some ignored pixels.
    coarse = torch.randint(-1, cfg["classes"], (cfg["batch"], 1, cfg["height"] // 8,
                                                  cfg["width"] // 8), generator=g)
    labels = F.interpolate(coarse.float(), scale_factor=8, mode="nearest").long()[:, 0]
    return emb.to(device), labels.to(device)


def check(provider: str, device: str) -> None:
    cfg = dict(QUICK, size=7)
    emb, labels = make_batch(cfg, device, seed=1)
    ref = MemoryBank(cfg["classes"], cfg["dim"], size=cfg["size"],
                     pixels_per_update=cfg["ppu"]).to(device)
    ours = MemoryBank(cfg["classes"], cfg["dim"], size=cfg["size"],
                      pixels_per_update=cfg["ppu"]).to(device)
    memory_bank_update_loop_2021(ref.features, ref.labels, ref.pointers, emb, labels, cfg["ppu"])
    ours.update(emb, labels, backend=provider.removeprefix("pixcontrast-"))
    assert torch.equal(ref.labels, ours.labels), f"{provider}: labels differ from the loop"
    assert torch.equal(ref.pointers, ours.pointers), f"{provider}: pointers differ"
    torch.testing.assert_close(ours.features[:, 0], ref.features[:, 0], rtol=0, atol=1e-5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="small batch (smoke test)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="bank storage dtype")
    p.add_argument("--json", help="write the records here")
    args = p.parse_args()
    cfg = QUICK if args.quick else PAPER
    device = args.device
    repeats = args.repeats or (10 if device == "cpu" else 50)
    dtype = getattr(torch, args.dtype)
    providers = ["loop-2021", "pixcontrast-torch"]
    if device == "cuda":
        providers.append("pixcontrast-triton")
    emb, labels = make_batch(cfg, device)
    timer = H.time_cuda if device == "cuda" else H.time_cpu
    rows = []
    for provider in providers:
        bank = MemoryBank(cfg["classes"], cfg["dim"], size=cfg["size"],
                          pixels_per_update=cfg["ppu"], dtype=dtype).to(device)
        if provider == "loop-2021":
            def fn(bank=bank):
                memory_bank_update_loop_2021(bank.features, bank.labels, bank.pointers,
                                             emb, labels, cfg["ppu"])
        else:
            check(provider, device)
            backend = provider.removeprefix("pixcontrast-")

            def fn(bank=bank, backend=backend):
                bank.update(emb, labels, backend=backend)
        t = timer(fn, repeats)
        rows.append({"provider": provider, "median_ms": t["median"], "p20_ms": t["p20"],
                     "p80_ms": t["p80"]})
    base = rows[0]["median_ms"]
    for r in rows:
        r["speedup"] = base / r["median_ms"]
    env = H.environment(device)
    shape = (f"B={cfg['batch']}, {cfg['height']}×{cfg['width']}, D={cfg['dim']}, "
             f"K={cfg['classes']}, size={cfg['size']}, ppu={cfg['ppu']}, bank {args.dtype}")
    print(f"memory-bank update, {shape} — {env['device_name']}, "
          f"{env['cpu_threads']} threads, torch {env['torch']}, commit {env['commit']}")
    print(H.markdown_table(rows, [("provider", "provider"), ("median ms", "median_ms"),
                                  ("p20 ms", "p20_ms"), ("p80 ms", "p80_ms"),
                                  ("speed-up vs loop", "speedup")]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workload": cfg, "device": device, "env": env, "records": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
