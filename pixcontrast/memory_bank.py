"""Class-keyed memory bank of the pixel contrastive loss (docs/design.md §2).

Per class ``c`` two FIFO rings of ``size`` rows each: queue 0 holds *segment* entries (the
L2-normalised mean embedding of class ``c`` in one image), queue 1 holds *pixel* entries
(up to ``pixels_per_update`` random pixels of class ``c`` in one image, each normalised).
Storage is class-sorted, ``features [K, 2, size, D]``, so ``contrast()`` is a view.

The update is one fixed-shape vectorised pass, with no loop over images or classes and no
host synchronisation (no ``.item()``, ``.nonzero()``, ``.cpu()``, data-dependent Python
control flow), so it can be captured in a CUDA graph or traced by ``torch.compile``. The
PyTorch path (the CPU's, and the other backends' under ``torch.distributed``):

1. ``counts [B, K]`` and per-image class sums ``[B, K, D]`` in a fixed order (``class_sums``:
   a CPU ``scatter_add_``, a one-hot batched GEMM on GPUs; never a float-atomic scatter, so
   two updates on the same inputs write the same bits), pixels with an ignored or
   out-of-range label in a dump class ``K``; segment entry = the normalised mean (fp32, or
   fp64 for a float64 bank), ``present = counts > 0``.
2. Pixel picks: per image, one stable sort of the int64 key ``label << 40 | random 40
   bits`` groups the pixels by class in (key, index) order; the first ``min(ppu, count)``
   of each group (offset by the exclusive cumsum of the counts over classes) are a uniform
   sample without replacement: ``[B, K, ppu]`` pixel indices and a valid mask.
3. Under ``torch.distributed`` (initialised, world size > 1) these fixed-shape tensors are
   all-gathered and every rank applies all ranks' entries in rank order (ranks must pass
   the same ``B``).
4. Enqueue order ``e`` of an entry within its ring = exclusive cumsum over images of the
   per-image entry counts (+ the pick rank for pixels); target slot ``(pointer + e) mod
   size``; entries with ``e < total - size`` are pushed out within this same update and
   are not written, so kept slots never collide. Pointers then advance by ``total`` (the
   number of entries written, not by 1 as in the 2021 release) modulo ``size``.
5. Write: on CPU an ``index_copy_`` in which every dropped entry repeats the first kept
   write (same row, same value), so duplicate indices carry identical data and the result
   is exact; under ``torch.distributed`` (or past the fused kernels' class limits) with
   ``backend="cuda"`` the C++/CUDA op ``torch.ops.pixcontrast.bank_write``
   (csrc/cuda/memory_bank.cu), with ``backend="triton"`` the Triton ``bank_write``, both a
   masked store. All three write the same bits.

``backend="triton"`` (the default on CUDA) and ``"cuda"`` in one process run the fused
update instead (``_update_fused``: kernels/memory_bank.py ``fused_update``, up to 511
classes, or the C++/CUDA op ``bank_update``, up to 95): four launches (the keys, two
kernels, the finite assert; no sort), the same keys, picks, slots and pointers as the
PyTorch path, the class sums reduced in another fixed order, so the values agree to
rounding (≤ 1e-6 in fp32), not bit for bit. Their completion counters (``_counters``, not
state) are zero between calls.

Labels outside ``[0, num_classes)`` (``ignore_index`` or any other value) are ignored:
their pixels take part in nothing. (Raising on them would need a host sync.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from pixcontrast._backends import (
    OpBackends, cuda_reasons, missing_cuda_kernels, runs_anywhere, triton_reasons,
)
from pixcontrast._checks import assert_finite
from pixcontrast._extension import extension_available

__all__ = ["MemoryBank"]

_RAND_BITS = 40  # random low bits of the pixel-pick sort key; the label sits above them
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_MISSING_CUDA = missing_cuda_kernels(("bank_write", "bank_update"))  # once: does not trace
# The update's backends. On an H200 the unfused update took 1.73 ms with each write
# (benchmarks/results/h200-2026-11-30); both are now fused (four launches, not measured
# yet: docs/notes/sampling-bank.md); Triton first, as before, then CUDA.
BACKENDS = OpBackends(
    "MemoryBank.update",
    checks={"torch": runs_anywhere, "triton": triton_reasons,
            "cuda": lambda device: cuda_reasons(device, _MISSING_CUDA)},
    priority={"cuda": ("triton", "cuda", "torch"), "cpu": ("torch",)})

def _fake_bank_write(features, labels, values, rows, keep, entry_labels):
    return None  # writes features / labels in place (the schema says so)


if extension_available():  # fake kernel: torch.compile traces the in-place CUDA write
    torch.library.register_fake("pixcontrast::bank_write")(_fake_bank_write)


# The Triton write of kernels/memory_bank.py as a torch.library op, registered like the
# InfoNCE ones (the C++ schema's signature, a fake kernel).
@torch.library.custom_op("pixcontrast::bank_write_triton", mutates_args=("features", "labels"))
def _bank_write_triton(features: Tensor, labels: Tensor, values: Tensor, rows: Tensor,
                       keep: Tensor, entry_labels: Tensor) -> None:
    from pixcontrast.kernels.memory_bank import bank_write
    bank_write(features, labels, values, rows, keep, entry_labels)


_bank_write_triton.register_fake(_fake_bank_write)

_NAN_MESSAGE = ("MemoryBank.update: embeddings contain NaN or Inf (or overflow the per-class "
                "sums)")


def _fused_supported(backend: str, num_classes: int, hw: int) -> bool:
    """Whether the fused update of ``backend`` takes this batch: the Triton one-hot tile
    holds up to 512 classes (with the dump class), the CUDA per-class accumulators 96
    (csrc/cuda/memory_bank.h kBankMaxClasses); a pick candidate packs the pixel index
    (< 2^23) next to the 40 key bits."""
    most = {"triton": 511, "cuda": 95}.get(backend, 0)
    return 1 <= num_classes <= most and hw <= 2 ** (63 - _RAND_BITS)


# The fused update of kernels/memory_bank.py as a torch.library op (two Triton launches).
@torch.library.custom_op("pixcontrast::bank_update_triton",
                         mutates_args=("features", "labels", "pointers", "counters"))
def _fused_update_triton(features: Tensor, labels: Tensor, pointers: Tensor, counters: Tensor,
                         x: Tensor, y: Tensor, keys: Tensor, pixels_per_update: int) -> Tensor:
    from pixcontrast.kernels.memory_bank import fused_update
    return fused_update(features, labels, pointers, counters, x, y, keys, pixels_per_update)


def _fake_update(features, labels, pointers, counters, x, y, keys, pixels_per_update):
    return x.new_empty((1,), dtype=torch.int32)


_fused_update_triton.register_fake(_fake_update)
if extension_available() and hasattr(torch.ops.pixcontrast, "bank_update"):
    # The C++ twin (csrc/sampling_ops.cpp; absent from an extension built from older
    # sources): torch.compile traces it, meta tensors run it.
    torch.library.register_fake("pixcontrast::bank_update")(_fake_update)


def class_sums(x: Tensor, y: Tensor, bins: int, method: str | None = None) -> Tensor:
    """Per-image sums over the pixels of each class, in a fixed order on every device.

    ``x [B, D, HW]`` float, ``y [B, HW]`` int64 in ``[0, bins)``; returns ``[B, D, bins]``
    in x's dtype. Equivalent PyTorch: ``sums[b, :, c] = x[b][:, y[b] == c].sum(1)``.

    ``method``: ``"scatter"`` (the CPU default: ``scatter_add_``, which on the CPU visits
    each output row's pixels in order; it reads x in its own layout with no transposed
    copy: 53 ms vs 148 ms for the matmul and 258 ms for a transposed ``index_add_`` on 2
    CPU cores at B=8, 128×256, D=256, K=19) or ``"matmul"`` (the default elsewhere: one
    batched GEMM with a one-hot ``[B, HW, bins]`` matrix, whose reduction order is fixed,
    where ``scatter_add_`` on CUDA is a float-atomic scatter whose result changes in the
    last bits from run to run). An fp32 matmul follows torch's TF32 setting, like every
    other fp32 matmul of the program (then ~2⁻¹¹ relative error in the sums).
    """
    b, d, hw = x.shape
    method = method or ("scatter" if x.device.type == "cpu" else "matmul")
    if method == "scatter":
        sums = torch.zeros(b, d, bins, dtype=x.dtype, device=x.device)
        return sums.scatter_add_(2, y[:, None, :].expand(b, d, hw), x)
    if method != "matmul":
        raise ValueError(f"method must be 'scatter' or 'matmul', got {method!r}")
    # (y == c) rather than F.one_hot, which validates the values with a host sync on CUDA.
    onehot = (y[:, :, None] == torch.arange(bins, device=y.device)).to(x.dtype)
    return torch.bmm(x, onehot)


def _distributed_world() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class MemoryBank(torch.nn.Module):
    """Per-class FIFO rings of segment and pixel embeddings (the paper's memory bank).

    Args:
        num_classes: ``K``. dim: embedding dim ``D``.
        size: rows of each ring (per class, per queue).
        pixels_per_update: pixel entries per (image, class), at most (``min(ppu, count)``).
        ignore_index: the label of never-written slots; must lie outside
            ``[0, num_classes)``.
        dtype: storage dtype (float32, bfloat16, float16 or float64). Means and
            normalisation are computed in float32 (float64 for a float64 bank).

    Buffers (all persistent, in ``state_dict()``):
        ``features [K, 2, size, D]`` dtype; ``labels [K, 2, size]`` int64, the class id of
        written slots and ``ignore_index`` elsewhere; ``pointers [K, 2]`` int64, the next
        slot of each ring.

    Equivalent PyTorch of ``update`` (loops and host syncs; single process)::

        for b in range(B):
            for c in labels[b].unique():           # increasing, valid classes only
                m = labels[b] == c;  x = embeddings[b][:, m].T          # [count, D]
                push(c, 0, normalize(x.mean(0)))
                for i in randperm(count)[:ppu]:
                    push(c, 1, normalize(x[i]))
        # push(c, q, v): features[c, q, ptr[c, q]] = v; labels[c, q, ptr[c, q]] = c;
        #                ptr[c, q] = (ptr[c, q] + 1) % size
    """

    features: Tensor
    labels: Tensor
    pointers: Tensor

    def __init__(self, num_classes: int, dim: int, size: int = 5000,
                 pixels_per_update: int = 10, ignore_index: int = -1,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("dim", dim), ("size", size),
                            ("pixels_per_update", pixels_per_update)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if num_classes >= 2 ** (63 - _RAND_BITS):
            raise ValueError(f"num_classes must be < 2**{63 - _RAND_BITS}, got {num_classes}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index={ignore_index} is a class id (num_classes="
                             f"{num_classes}); it must lie outside [0, num_classes)")
        if dtype not in _FLOAT_DTYPES:
            raise TypeError(f"dtype must be one of {_FLOAT_DTYPES}, got {dtype}")
        self.num_classes = num_classes
        self.dim = dim
        self.size = size
        self.pixels_per_update = pixels_per_update
        self.ignore_index = ignore_index
        self.register_buffer("features", torch.zeros(num_classes, 2, size, dim, dtype=dtype))
        self.register_buffer("labels", torch.full((num_classes, 2, size), ignore_index,
                                                  dtype=torch.long))
        self.register_buffer("pointers", torch.zeros(num_classes, 2, dtype=torch.long))
        # The fused Triton update's completion counters (zero between calls; not state).
        self.register_buffer("_counters", torch.zeros(1, dtype=torch.int32), persistent=False)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, dim={self.dim}, size={self.size}, "
                f"pixels_per_update={self.pixels_per_update}, "
                f"ignore_index={self.ignore_index}, dtype={self.features.dtype}")

    def contrast(self) -> tuple[Tensor, Tensor]:
        """``(features [K·2·size, D], labels [K·2·size])``: views of the storage, no copy.

        Rows are class-sorted (class, then queue, then slot); never-written rows carry
        ``ignore_index`` and take no part in ``fused_pixel_contrast``.
        """
        k, _, s, d = self.features.shape
        return self.features.view(k * 2 * s, d), self.labels.view(-1)

    # ----------------------------------------------------------------------------------
    # Update
    # ----------------------------------------------------------------------------------

    def _check_update_inputs(self, embeddings: object, labels: object) -> None:
        if not isinstance(embeddings, Tensor):
            raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
        if not isinstance(labels, Tensor):
            raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
        if embeddings.dim() != 4:
            raise ValueError(f"embeddings must be 4-D [B, D, h, w], got shape "
                             f"{tuple(embeddings.shape)}")
        if embeddings.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"embeddings must be float32, bfloat16, float16 or float64, got "
                            f"{embeddings.dtype}")
        if embeddings.shape[1] != self.dim:
            raise ValueError(f"embeddings have D={embeddings.shape[1]} channels but the bank "
                             f"has dim={self.dim}")
        if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        b, _, h, w = embeddings.shape
        if h * w == 0:
            raise ValueError(f"embeddings have an empty grid, shape {tuple(embeddings.shape)}")
        if tuple(labels.shape) != (b, h, w):
            raise ValueError(f"labels must be [B, h, w] = {(b, h, w)} (the embeddings' batch "
                             f"and grid; resize them first), got {tuple(labels.shape)}")
        if embeddings.device != self.features.device:
            raise ValueError(f"embeddings are on {embeddings.device} but the bank is on "
                             f"{self.features.device}")
        if labels.device != self.features.device:
            raise ValueError(f"labels are on {labels.device} but the bank is on "
                             f"{self.features.device}")

    def _choose_backend(self, backend: str) -> str:
        return BACKENDS.choose(backend, self.features.device)

    def _entries(self, embeddings: Tensor, labels: Tensor, generator: torch.Generator | None
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Fixed-shape entries of one batch.

        Returns ``segment [B, K, D]`` and ``pixel [B, K, ppu, D]`` (normalised, storage
        dtype), ``counts [B, K]`` int64 (pixels of class c in image b) and the number of
        pixel entries ``picks [B, K]`` int64 (``min(ppu, counts)``).
        """
        k, p = self.num_classes, self.pixels_per_update
        b, d = embeddings.shape[:2]
        compute = torch.float64 if self.features.dtype == torch.float64 else torch.float32
        x = embeddings.detach().flatten(2)                           # [B, D, HW]
        hw = x.shape[2]
        y = labels.flatten(1).long()
        valid = (y >= 0) & (y < k)
        y = torch.where(valid, y, k)                                 # dump class K
        counts = torch.zeros(b, k + 1, dtype=torch.long, device=y.device)
        counts.scatter_add_(1, y, torch.ones_like(y))
        sums = class_sums(x.to(compute), y, k + 1)                  # [B, D, K+1]
        # Every pixel is in some bin (ignored ones in the dump bin K), so a NaN or Inf
        # anywhere in the embeddings shows in these small sums: refused here, not at the next
        # loss call that would read it from the bank, without a second read of x.
        assert_finite(sums, _NAN_MESSAGE)
        counts = counts[:, :k]
        means = sums[:, :, :k].transpose(1, 2) / counts.clamp(min=1)[:, :, None]
        segment = F.normalize(means, dim=2).to(self.features.dtype)  # [B, K, D]

        key = torch.randint(0, 2 ** _RAND_BITS, (b, hw), device=y.device,
                            generator=generator, dtype=torch.long)
        order = torch.sort(key | (y << _RAND_BITS), dim=1, stable=True).indices  # by class
        starts = torch.cumsum(counts, 1) - counts                    # [B, K]
        j = torch.arange(p, device=y.device)
        pos = (starts[:, :, None] + j).clamp(max=hw - 1).view(b, k * p)
        pix = torch.gather(order, 1, pos)                            # [B, K·ppu]
        picked = torch.gather(x, 2, pix[:, None, :].expand(b, d, k * p))  # [B, D, K·ppu]
        pixel = F.normalize(picked.to(compute), dim=1).transpose(1, 2)
        pixel = pixel.reshape(b, k, p, d).to(self.features.dtype)
        return segment, pixel, counts, counts.clamp(max=p)

    def _update_fused(self, embeddings: Tensor, labels: Tensor,
                      generator: torch.Generator | None, kernels: str) -> None:
        """The fused paths in four launches: the keys, two kernels (``kernels="triton"``:
        kernels/memory_bank.py ``fused_update``; ``"cuda"``: the op ``bank_update`` of
        csrc/cuda/memory_bank.cu) and the finite assert. The same keys as ``_entries``,
        hence the same picks; the sums are reduced in another fixed order."""
        b = embeddings.shape[0]
        x = embeddings.detach().flatten(2)                           # [B, D, HW], a view
        y = labels.flatten(1)
        key = torch.randint(0, 2 ** _RAND_BITS, y.shape, device=y.device,
                            generator=generator, dtype=torch.long)
        if self._counters.numel() < b + 1:  # grows once per larger batch (zeros: a launch)
            self._counters = torch.zeros(b + 1, dtype=torch.int32, device=y.device)
        if kernels == "triton":  # reads any integer dtype
            ok = _fused_update_triton(self.features, self.labels, self.pointers,
                                      self._counters, x, y.contiguous(), key,
                                      self.pixels_per_update)
        else:  # the C++ op takes int64 labels
            ok = torch.ops.pixcontrast.bank_update(self.features, self.labels, self.pointers,
                                                   self._counters, x, y.long().contiguous(),
                                                   key, self.pixels_per_update)
        torch._assert_async(ok, _NAN_MESSAGE)

    @torch.no_grad()
    def update(self, embeddings: Tensor, labels: Tensor,
               generator: torch.Generator | None = None, *, backend: str = "auto") -> None:
        """Enqueue one batch: per image (batch order), per class present (increasing).

        Args:
            embeddings: ``[B, D, h, w]`` float32 / bfloat16 / float16 / float64 (detached
                inside; no gradient flows into the bank).
            labels: ``[B, h, w]`` integer, on the embeddings' grid. Values outside
                ``[0, num_classes)``, ``ignore_index`` among them, are ignored.
            generator: a ``torch.Generator`` on the bank's device for the pixel picks.
            backend: ``"auto"`` (Triton on CUDA, torch elsewhere), ``"torch"``,
                ``"triton"`` (CUDA, or CPU under ``TRITON_INTERPRET=1``) or ``"cuda"``
                (the C++/CUDA kernels of the extension: a bank on a CUDA device and a CUDA
                build of ``pixcontrast._C``; raises otherwise). In one process both run
                the fused update (module doc): the torch path's slots, values equal to
                rounding.

        Under ``torch.distributed`` every rank must call ``update`` with the same ``B``
        (the entries are all-gathered as fixed-shape tensors); all replicas then apply all
        ranks' entries in rank order and stay identical.
        """
        self._check_update_inputs(embeddings, labels)
        name = self._choose_backend(backend)
        world = _distributed_world()
        hw = embeddings.shape[2] * embeddings.shape[3]
        if world == 1 and _fused_supported(name, self.num_classes, hw):
            self._update_fused(embeddings, labels, generator, kernels=name)
            return
        segment, pixel, counts, picks = self._entries(embeddings, labels, generator)
        if world > 1:
            segment, pixel, counts, picks = (_all_gather_cat(t, world)
                                             for t in (segment, pixel, counts, picks))
        self._enqueue(segment, pixel, counts, picks, name)

    def _enqueue(self, segment: Tensor, pixel: Tensor, counts: Tensor, picks: Tensor,
                 backend: str) -> None:
        """Write fixed-shape entries of ``B`` images (in batch order) into the rings."""
        k, s, p = self.num_classes, self.size, self.pixels_per_update
        b, d = segment.shape[0], self.dim
        dev = segment.device
        classes = torch.arange(k, device=dev)

        # Segment ring (queue 0): one entry per (image, present class).
        present = (counts > 0).long()                                 # [B, K]
        seg_total = present.sum(0)                                    # [K]
        seg_order = torch.cumsum(present, 0) - present                # enqueue order e
        seg_keep = (present > 0) & (seg_order >= seg_total - s)
        seg_rows = (classes * 2) * s + (self.pointers[:, 0] + seg_order) % s

        # Pixel ring (queue 1): picks[b, c] entries per (image, class).
        j = torch.arange(p, device=dev)
        pix_total = picks.sum(0)
        pix_order = (torch.cumsum(picks, 0) - picks)[:, :, None] + j  # [B, K, ppu]
        pix_keep = (j < picks[:, :, None]) & (pix_order >= pix_total[:, None] - s)
        pix_rows = (classes * 2 + 1)[:, None] * s + (self.pointers[:, 1, None] + pix_order) % s

        values = torch.cat([segment.reshape(b * k, d), pixel.reshape(b * k * p, d)])
        rows = torch.cat([seg_rows.reshape(-1), pix_rows.reshape(-1)])
        keep = torch.cat([seg_keep.reshape(-1), pix_keep.reshape(-1)])
        entry_labels = torch.cat([classes.expand(b, k).reshape(-1),
                                  classes[:, None].expand(b, k, p).reshape(-1)])
        feats, lbls = self.contrast()
        if backend == "triton":
            _bank_write_triton(feats, lbls, values, rows, keep, entry_labels)
        elif backend == "cuda":
            torch.ops.pixcontrast.bank_write(feats, lbls, values, rows, keep, entry_labels)
        else:
            _torch_write(feats, lbls, values, rows, keep, entry_labels)
        self.pointers.add_(torch.stack([seg_total, pix_total], 1)).remainder_(s)


def _torch_write(features: Tensor, labels: Tensor, values: Tensor, rows: Tensor, keep: Tensor,
                 entry_labels: Tensor) -> None:
    """``features[rows[keep]] = values[keep]`` (and labels) without a host sync.

    The kept rows are distinct. Each dropped entry repeats the first kept write (same row,
    same value; or row 0 with its current content when nothing is kept), so the duplicate
    indices of ``index_copy_`` carry identical data and the result is exact.
    """
    if rows.numel() == 0:
        return
    first = keep.to(torch.int8).argmax().view(1)   # index_select, not x[t]: no sync
    any_kept = keep.any()
    ref_row = torch.where(any_kept, rows.index_select(0, first), 0)
    ref_value = torch.where(any_kept, values.index_select(0, first), features[:1])
    ref_label = torch.where(any_kept, entry_labels.index_select(0, first), labels[:1])
    rows = torch.where(keep, rows, ref_row)
    values = torch.where(keep[:, None], values, ref_value)
    entry_labels = torch.where(keep, entry_labels, ref_label)
    features.index_copy_(0, rows, values)
    labels.index_copy_(0, rows, entry_labels)


def _all_gather_cat(t: Tensor, world: int) -> Tensor:
    """Concatenate every rank's ``t`` along dim 0, in rank order (same shape on all ranks).

    Gathered in float32 when ``t`` is bf16/fp16, which not every backend (gloo) carries.
    """
    wire = t.float() if t.dtype in (torch.bfloat16, torch.float16) else t.contiguous()
    out = [torch.empty_like(wire) for _ in range(world)]
    dist.all_gather(out, wire)
    return torch.cat(out).to(t.dtype)
