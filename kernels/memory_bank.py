"""Triton kernels of the memory bank (docs/design.md §2.6, "Memory bank semantics").

``fused_update`` (the Triton update: ``MemoryBank.update(backend="triton")``, one process):
the whole update of one batch in one launch, ``_update_kernel``'s docstring; with the
random keys, one sort and the finite assert, four launches per call.

``bank_write(features, labels, values, rows, keep, entry_labels)`` (the write of entries
computed in PyTorch: the distributed update, which all-gathers them first, and banks of
more than 511 classes) scatters ``E`` entries into the class-sorted bank, in place:

* ``features [R, D]`` the bank rows (``MemoryBank.features.view(-1, D)``), any float dtype,
  row-contiguous; ``labels [R]`` int64 (``MemoryBank.labels.view(-1)``).
* ``values [E, D]`` the new rows, already normalised and in ``features``' dtype;
  ``rows [E]`` int64 target row of each entry; ``keep [E]`` bool, entries with ``keep``
  false are not written (empty classes, padding, entries pushed out of a ring in the same
  update); ``entry_labels [E]`` int64.

The kept rows are distinct (the caller guarantees it), so the write is race-free and
deterministic; the masked store is what lets this kernel drop entries without the dump
row or the duplicate-write trick the torch path needs. Equivalent PyTorch::

    k = keep.nonzero().squeeze(1)          # (a host sync: this kernel has none)
    features[rows[k]] = values[k];  labels[rows[k]] = entry_labels[k]

Grid ``(E, cdiv(D, BLOCK_D))``; no host synchronisation; empty inputs launch nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["bank_write", "fused_update"]

_MAX_BLOCK_D = 256  # one program writes at most this many columns of one row


@triton.jit
def _bank_write_kernel(
    values_ptr, rows_ptr, keep_ptr, entry_labels_ptr, features_ptr, labels_ptr,
    D,
    stride_values_0, stride_values_1, stride_features_0, stride_features_1,
    BLOCK_D: tl.constexpr,
):
    entry = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1).to(tl.int64)
    row = tl.load(rows_ptr + entry)
    offs_d = block * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    # keep as a [BLOCK_D] vector (a broadcast load): scalar-bool masks are not portable to
    # the interpreter.
    keep_d = tl.load(keep_ptr + entry + offs_d * 0) != 0
    x = tl.load(values_ptr + entry * stride_values_0 + offs_d * stride_values_1,
                mask=mask_d, other=0.0)
    tl.store(features_ptr + row * stride_features_0 + offs_d * stride_features_1, x,
             mask=mask_d & keep_d)
    # The label: lane 0 of block 0 only.
    lbl = tl.load(entry_labels_ptr + entry + offs_d * 0)
    tl.store(labels_ptr + row + offs_d * 0, lbl, mask=keep_d & (offs_d == 0))


def bank_write(features: Tensor, labels: Tensor, values: Tensor, rows: Tensor, keep: Tensor,
               entry_labels: Tensor) -> None:
    """Write the kept entries into ``features``/``labels`` in place (see the module doc)."""
    num_entries, dim = values.shape
    if num_entries == 0 or dim == 0:
        return
    block_d = min(_MAX_BLOCK_D, triton.next_power_of_2(dim))
    grid = (num_entries, triton.cdiv(dim, block_d))
    _bank_write_kernel[grid](
        values, rows, keep.to(torch.int8), entry_labels, features, labels,
        dim,
        values.stride(0), values.stride(1), features.stride(0), features.stride(1),
        BLOCK_D=block_d, num_warps=1 if block_d <= 128 else 2,
    )


# ------------------------------------------------------------------------------------------
# The fused update: two kernels (with the random keys and the finite assert: four launches).
# ------------------------------------------------------------------------------------------

_SPLIT_PROGRAMS = 128   # programs of the class-sum pass, about one per SM of an H100/H200
_BLOCK_P = 64           # pixels per step of the counts
_SUM_D = 256            # embedding columns per class-sum pass (D = 256: one pass)
_SUM_P = 32             # pixels per tl.dot step of the class sums
_MAX_BLOCK_D = 64       # embedding columns per tile of the reductions and the write
_MIN_CHUNK = 32         # pixels per program: at least one tl.dot step
_MAX_CHUNK = 4096       # and at most one tl.sort of this size
_BLOCK_B = 16           # images per step of the ring-slot pass
_KEY_BITS = 40          # random bits of a pick key (MemoryBank's _RAND_BITS)
_PIXEL_BITS = 63 - _KEY_BITS   # pick candidates are key << _PIXEL_BITS | pixel
_NORM_EPS = tl.constexpr(1e-12)   # F.normalize's eps
_UPDATE_WARPS = 8       # 4 spill the fp32 variant (AOT for sm_90: 1 KB of stack)


@triton.jit
def _to_storage(v, out_ty: tl.constexpr):
    """``v`` in the bank's dtype, rounded to nearest even like torch's ``.to``. bf16 is
    rounded by hand from the fp32 bits (finite values here): the interpreter's own cast
    truncates."""
    if out_ty == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return v.to(out_ty)


@triton.jit
def _update_kernel(
    x_ptr, sxb, sxd, sxp, y_ptr, key_ptr,
    ws_sum_ptr, ws_cnt_ptr, ws_tot_ptr, ws_mean_ptr, ws_norm_ptr, ws_bad_ptr, ws_pick_ptr,
    ws_cand_ptr, ws_ccnt_ptr, ws_slot_ptr, counter_ptr, ok_ptr, bptr_ptr,
    B, D, HW, K, SIZE, PPU, NSPLIT,
    CHUNK: tl.constexpr, LOG_CHUNK: tl.constexpr, KEY_BITS: tl.constexpr,
    PIX_BITS: tl.constexpr,
    NSPLIT_P: tl.constexpr, KP: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
    SUM_D: tl.constexpr, SUM_P: tl.constexpr, PPU_P: tl.constexpr, BLOCK_B: tl.constexpr,
    F64: tl.constexpr,
):
    """Grid (B, NSPLIT). Kernel 1 of the fused update.

    1. Program (b, s), pixels ``[s·CHUNK, (s + 1)·CHUNK)`` of image b: counts and class sums
       (one-hot GEMMs) into per-program partials; its pick candidates: its pixels sorted
       by (class, key, pixel) (``tl.sort``), the first PPU of each class.
    2. The last program of image b (per-image counter): reduces the partials in split order
       (deterministic), keeps the means and norms, checks them finite, and picks per class
       the PPU lowest (key, pixel) among the candidates (another ``tl.sort``): the torch
       path's picks (``sort(key | class << 40, stable)``, the first ``min(PPU, count)``).
    3. The last image (global counter): each (image, class)'s enqueue order in both rings
       and, unless something was not finite, the new pointers; ``ok``.

    The counters are reset by the programs that consume them. ``_write_kernel`` then writes
    the entries."""
    if F64:
        acc_ty = tl.float64
    else:
        acc_ty = tl.float32
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1).to(tl.int64)
    cls = tl.arange(0, KP)
    p_begin = s * CHUNK
    p_end = tl.minimum(p_begin + CHUNK, HW)
    pp = tl.arange(0, BLOCK_P)
    dd = tl.arange(0, BLOCK_D)
    jj = tl.arange(0, PPU_P)
    part = b * NSPLIT + s
    # 1. Counts and class sums of pixels [p_begin, p_end): one-hot GEMMs, dump class K.
    cnt = tl.zeros((KP,), tl.int32)
    for p0 in range(p_begin, p_end, BLOCK_P):
        m = p0 + pp < p_end
        y = tl.load(y_ptr + b * HW + p0 + pp, mask=m, other=-1).to(tl.int64)
        c = tl.where(m, tl.where((y >= 0) & (y < K), y, K), KP - 1)
        cnt += tl.histogram(c.to(tl.int32), KP)
    tl.store(ws_cnt_ptr + part * KP + cls, cnt)
    # Pick candidates: the chunk sorted by (class, key, position); none (KP) sort last.
    q = tl.arange(0, CHUNK)
    mq = p_begin + q < HW
    qy = tl.load(y_ptr + b * HW + p_begin + q, mask=mq, other=-1).to(tl.int64)
    qc = tl.where(mq & (qy >= 0) & (qy < K), qy, KP)
    qkey = tl.load(key_ptr + b * HW + p_begin + q, mask=mq, other=0)
    qcnt = tl.histogram(tl.minimum(qc, KP - 1).to(tl.int32), KP)   # bins >= K unused
    tl.store(ws_ccnt_ptr + (2 * part) * KP + cls, tl.cumsum(qcnt, axis=0) - qcnt)
    tl.store(ws_ccnt_ptr + (2 * part + 1) * KP + cls, qcnt)
    tl.debug_barrier()  # the class starts before their reads below
    sk = tl.sort((qc << (KEY_BITS + LOG_CHUNK)) | (qkey << LOG_CHUNK) | q)
    sc = sk >> (KEY_BITS + LOG_CHUNK)
    rank = q - tl.load(ws_ccnt_ptr + (2 * part) * KP + tl.minimum(sc, KP - 1))
    take = (sc < K) & (rank < PPU)
    pix = p_begin + (sk & (CHUNK - 1))
    cand = (((sk >> LOG_CHUNK) & ((1 << KEY_BITS) - 1)) << PIX_BITS) | pix  # key, pixel
    tl.store(ws_cand_ptr + (part * K + sc) * PPU + rank, cand, mask=take)
    # The whole D (up to SUM_D columns) per pass, so that labels and one-hot are built once
    # per pixel block; the one-hot is exact in TF32, so an fp32 x needs two TF32 products
    # (x = hi + lo, hi its top 10 mantissa bits: error ~2^-21 |x|), a 16-bit x one.
    sd = tl.arange(0, SUM_D)
    sp = tl.arange(0, SUM_P)
    for d0 in range(0, D, SUM_D):
        md = d0 + sd < D
        acc = tl.zeros((SUM_D, KP), acc_ty)
        for p0 in range(p_begin, p_end, SUM_P):
            m = p0 + sp < p_end
            y = tl.load(y_ptr + b * HW + p0 + sp, mask=m, other=-1).to(tl.int64)
            c = tl.where((y >= 0) & (y < K), y, K)
            xt = tl.load(x_ptr + b * sxb + (d0 + sd)[:, None] * sxd + (p0 + sp)[None, :] * sxp,
                         mask=md[:, None] & m[None, :], other=0.0)
            if F64:  # fp64 FMAs
                acc += tl.dot(xt.to(tl.float64), (c[:, None] == cls[None, :]).to(tl.float64),
                              input_precision="ieee", out_dtype=tl.float64)
            elif xt.dtype == tl.float32:
                onehot = (c[:, None] == cls[None, :]).to(tl.float32)
                hi = (xt.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
                acc += tl.dot(hi, onehot, input_precision="tf32")
                acc += tl.dot(xt - hi, onehot, input_precision="tf32")
            else:
                acc += tl.dot(xt.to(tl.float32), (c[:, None] == cls[None, :]).to(tl.float32),
                              input_precision="tf32")
        tl.store(ws_sum_ptr + (part * D + d0 + sd)[:, None] * KP + cls[None, :], acc,
                 mask=md[:, None])
    # 2. The last program of image b reduces the image. (The barrier orders every thread's
    #    stores before the one thread's release; the readers load with volatile.)
    tl.debug_barrier()
    done = tl.atomic_add(counter_ptr + b, 1, sem="acq_rel")
    if done == NSPLIT - 1:
        tot = tl.zeros((KP,), tl.int32)
        for s2 in range(0, NSPLIT):
            tot += tl.load(ws_cnt_ptr + (b * NSPLIT + s2) * KP + cls, volatile=True)
        tl.store(ws_tot_ptr + b * KP + cls, tot)
        denom = tl.maximum(tot, 1).to(acc_ty)
        sumsq = tl.zeros((KP,), acc_ty)
        bad = tl.zeros((KP,), tl.int32)
        for d0 in range(0, D, BLOCK_D):
            md = d0 + dd < D
            acc = tl.zeros((BLOCK_D, KP), acc_ty)
            for s2 in range(0, NSPLIT):
                acc += tl.load(ws_sum_ptr + ((b * NSPLIT + s2) * D + d0 + dd)[:, None] * KP
                               + cls[None, :], mask=md[:, None], other=0.0, volatile=True)
            # NaN/Inf anywhere in the image lands in some bin (ignored pixels in K).
            finite = (acc - acc) == 0                     # false for NaN and ±Inf
            bad = tl.maximum(bad, tl.max((~finite).to(tl.int32), axis=0))
            mean = acc / denom[None, :]
            sumsq += tl.sum(tl.where(md[:, None], mean * mean, 0.0), axis=0)
            tl.store(ws_mean_ptr + (b * D + d0 + dd)[:, None] * KP + cls[None, :], mean,
                     mask=md[:, None])
        tl.store(ws_norm_ptr + b * KP + cls, tl.maximum(tl.sqrt(sumsq), _NORM_EPS))
        tl.store(ws_bad_ptr + b, tl.max(bad, axis=0))
        # Picks: per class, the PPU lowest candidates (key << bits | pixel) of all splits.
        ci = tl.arange(0, NSPLIT_P * PPU_P)
        cs = ci // PPU_P
        cj = ci % PPU_P
        big = tl.full((NSPLIT_P * PPU_P,), 9223372036854775807, tl.int64)
        for c32 in range(0, K):
            n_c = tl.load(ws_ccnt_ptr + (2 * (b * NSPLIT + cs) + 1) * KP + c32,
                          mask=cs < NSPLIT, other=0, volatile=True)
            ok_c = (cs < NSPLIT) & (cj < tl.minimum(n_c, PPU))
            v = tl.load(ws_cand_ptr + ((b * NSPLIT + cs) * K + c32) * PPU + cj, mask=ok_c,
                        other=0, volatile=True)
            v = tl.sort(tl.where(ok_c, v, big))
            tl.store(ws_pick_ptr + (b * K + c32) * PPU + ci, v & ((1 << PIX_BITS) - 1),
                     mask=(ci < PPU) & (v != big))
        tl.atomic_xchg(counter_ptr + b, 0)
        # 3. The last image: enqueue orders and pointers.
        tl.debug_barrier()
        images_done = tl.atomic_add(counter_ptr + B, 1, sem="acq_rel")
        if images_done == B - 1:
            _ring_orders(ws_tot_ptr, ws_bad_ptr, ws_slot_ptr, ok_ptr, bptr_ptr, B, K, SIZE,
                         PPU, KP, BLOCK_B)
            tl.atomic_xchg(counter_ptr + B, 0)


@triton.jit
def _ring_orders(ws_tot_ptr, ws_bad_ptr, ws_slot_ptr, ok_ptr, bptr_ptr, B, K, SIZE, PPU,
                 KP: tl.constexpr, BLOCK_B: tl.constexpr):
    """docs/design.md §2.6 step 4: ``ws_slot [4, B, KP]``: each (image, class)'s enqueue
    order in the segment and pixel rings (exclusive cumsums over images), then the rings'
    totals and the pointers before the update (rows 2 and 3, image 0); the pointers advance
    by the totals. ``ok`` = all finite (else nothing moves)."""
    bb = tl.arange(0, BLOCK_B)
    cls = tl.arange(0, KP)
    bad = tl.zeros((), tl.int32)
    for b0 in range(0, B, BLOCK_B):
        bad = tl.maximum(bad, tl.max(tl.load(ws_bad_ptr + b0 + bb, mask=b0 + bb < B, other=0,
                                             volatile=True), axis=0))
    tl.store(ok_ptr, (bad == 0).to(tl.int32))
    seg_total = tl.zeros((KP,), tl.int64)
    pix_total = tl.zeros((KP,), tl.int64)
    for b0 in range(0, B, BLOCK_B):
        mb = (b0 + bb < B)[:, None] & (cls < K)[None, :]
        t = tl.load(ws_tot_ptr + (b0 + bb)[:, None] * KP + cls[None, :], mask=mb, other=0,
                    volatile=True).to(tl.int64)
        present = (t > 0).to(tl.int64)
        picks = tl.minimum(t, PPU)
        tl.store(ws_slot_ptr + (b0 + bb)[:, None] * KP + cls[None, :],
                 seg_total[None, :] + tl.cumsum(present, axis=0) - present, mask=mb)
        tl.store(ws_slot_ptr + (B + b0 + bb)[:, None] * KP + cls[None, :],
                 pix_total[None, :] + tl.cumsum(picks, axis=0) - picks, mask=mb)
        seg_total += tl.sum(present, axis=0)
        pix_total += tl.sum(picks, axis=0)
    mk = cls < K
    seg_ptr = tl.load(bptr_ptr + 2 * cls, mask=mk, other=0)
    pix_ptr = tl.load(bptr_ptr + 2 * cls + 1, mask=mk, other=0)
    tl.store(ws_slot_ptr + (2 * B) * KP + cls, seg_total)
    tl.store(ws_slot_ptr + (2 * B + 1) * KP + cls, pix_total)
    tl.store(ws_slot_ptr + (2 * B + 2) * KP + cls, seg_ptr)
    tl.store(ws_slot_ptr + (2 * B + 3) * KP + cls, pix_ptr)
    tl.debug_barrier()  # the pointers read before they move
    move = mk & ((tl.zeros((KP,), tl.int32) + bad) == 0)   # (vector masks: the interpreter)
    tl.store(bptr_ptr + 2 * cls, (seg_ptr + seg_total) % SIZE, mask=move)
    tl.store(bptr_ptr + 2 * cls + 1, (pix_ptr + pix_total) % SIZE, mask=move)


@triton.jit
def _write_kernel(x_ptr, sxb, sxd, sxp, ws_tot_ptr, ws_mean_ptr, ws_norm_ptr, ws_pick_ptr,
                  ws_slot_ptr, ok_ptr, feat_ptr, blab_ptr, B, D, K, SIZE, PPU,
                  KP: tl.constexpr, BLOCK_D: tl.constexpr, PPU_P: tl.constexpr,
                  F64: tl.constexpr):
    """Grid (B, K). Kernel 2 of the fused update: the kept entries of (image b, class c),
    normalised, in the bank's dtype: the segment entry (mean / norm) and the pixel entries
    (the picked pixels, each normalised), at their ring slots. Nothing when ``ok`` is 0."""
    if F64:
        acc_ty = tl.float64
    else:
        acc_ty = tl.float32
    out_ty = feat_ptr.dtype.element_ty
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    dd = tl.arange(0, BLOCK_D)
    jj = tl.arange(0, PPU_P)
    ok = tl.load(ok_ptr + jj * 0) != 0                     # as a vector: interpreter masks
    t = tl.load(ws_tot_ptr + b * KP + c).to(tl.int64)
    seg_e = tl.load(ws_slot_ptr + b * KP + c)
    pix_e = tl.load(ws_slot_ptr + (B + b) * KP + c) + jj
    seg_total = tl.load(ws_slot_ptr + (2 * B) * KP + c)
    pix_total = tl.load(ws_slot_ptr + (2 * B + 1) * KP + c)
    seg_ptr = tl.load(ws_slot_ptr + (2 * B + 2) * KP + c)
    pix_ptr = tl.load(ws_slot_ptr + (2 * B + 3) * KP + c)
    # Segment entry (entries pushed out within this update are not written).
    seg_keep = (tl.load(ok_ptr + dd * 0) != 0) & (
        (tl.zeros((BLOCK_D,), tl.int32) + ((t > 0) & (seg_e >= seg_total - SIZE)).to(tl.int32))
        != 0)
    seg_row = (2 * c) * SIZE + (seg_ptr + seg_e) % SIZE
    inv = 1.0 / tl.load(ws_norm_ptr + b * KP + c)
    for d0 in range(0, D, BLOCK_D):
        md = d0 + dd < D
        mean = tl.load(ws_mean_ptr + (b * D + d0 + dd) * KP + c, mask=md & seg_keep, other=0.0)
        tl.store(feat_ptr + seg_row * D + d0 + dd, _to_storage(mean * inv, out_ty),
                 mask=md & seg_keep)
    tl.store(blab_ptr + seg_row + dd * 0, c + dd * 0, mask=seg_keep & (dd == 0))
    # Pixel entries.
    keep = ok & (jj < tl.minimum(t, PPU)) & (pix_e >= pix_total - SIZE)
    pix = tl.load(ws_pick_ptr + (b * K + c) * PPU + jj, mask=keep, other=0)
    sq = tl.zeros((PPU_P,), acc_ty)
    for d0 in range(0, D, BLOCK_D):
        md = d0 + dd < D
        v = tl.load(x_ptr + b * sxb + (d0 + dd)[None, :] * sxd + pix[:, None] * sxp,
                    mask=keep[:, None] & md[None, :], other=0.0).to(acc_ty)
        sq += tl.sum(v * v, axis=1)
    inv_p = 1.0 / tl.maximum(tl.sqrt(sq), _NORM_EPS)
    row = (2 * c + 1) * SIZE + (pix_ptr + pix_e) % SIZE
    for d0 in range(0, D, BLOCK_D):
        md = d0 + dd < D
        v = tl.load(x_ptr + b * sxb + (d0 + dd)[None, :] * sxd + pix[:, None] * sxp,
                    mask=keep[:, None] & md[None, :], other=0.0).to(acc_ty)
        tl.store(feat_ptr + row[:, None] * D + (d0 + dd)[None, :],
                 _to_storage(v * inv_p[:, None], out_ty), mask=keep[:, None] & md[None, :])
    tl.store(blab_ptr + row, c + jj * 0, mask=keep)


def fused_update(features: Tensor, labels: Tensor, pointers: Tensor, counters: Tensor,
                 x: Tensor, y: Tensor, keys: Tensor, pixels_per_update: int) -> Tensor:
    """One batch into the bank, in place: ``_update_kernel`` then ``_write_kernel``.
    Returns ``ok [1]`` int32, 0 when the embeddings hold NaN/Inf (then nothing was written).

    ``features [K, 2, size, D]`` contiguous, ``labels [K, 2, size]`` int64, ``pointers
    [K, 2]`` int64; ``counters [B + 1]`` int32 zeros (left zero); ``x [B, D, HW]`` float,
    any strides; ``y [B, HW]`` any integer dtype, contiguous; ``keys [B, HW]`` int64 random
    40-bit keys (the torch path's draw). Needs ``K + 1 <= 512`` (the one-hot tile) and
    ``HW <= 2**23`` (a pick candidate packs the pixel next to the 40 key bits): the
    caller's check (pixcontrast/memory_bank.py ``_fused_supported``).
    """
    k, _, size, d = features.shape
    b, _, hw = x.shape
    dev = x.device
    f64 = features.dtype == torch.float64
    acc = torch.float64 if f64 else torch.float32
    kp = max(16, triton.next_power_of_2(k + 1))
    # Pixels per program: a power of two (the candidates' tl.sort), about _SPLIT_PROGRAMS
    # programs in all.
    chunk = triton.next_power_of_2(triton.cdiv(hw, max(1, triton.cdiv(_SPLIT_PROGRAMS, b))))
    chunk = min(max(chunk, _MIN_CHUNK), _MAX_CHUNK)
    nsplit = triton.cdiv(hw, chunk)
    block_d = max(16, min(_MAX_BLOCK_D, triton.next_power_of_2(d)))
    ppu = pixels_per_update
    ppu_p = max(2, triton.next_power_of_2(ppu))
    ws_sum = torch.empty((b, nsplit, d, kp), dtype=acc, device=dev)
    ws_cnt = torch.empty((b, nsplit, kp), dtype=torch.int32, device=dev)
    ws_tot = torch.empty((b, kp), dtype=torch.int32, device=dev)
    ws_mean = torch.empty((b, d, kp), dtype=acc, device=dev)
    ws_norm = torch.empty((b, kp), dtype=acc, device=dev)
    ws_bad = torch.empty((b,), dtype=torch.int32, device=dev)
    ws_pick = torch.empty((b, k, ppu), dtype=torch.int64, device=dev)
    ws_cand = torch.empty((b, nsplit, k, ppu), dtype=torch.int64, device=dev)
    ws_ccnt = torch.empty((b, nsplit, 2, kp), dtype=torch.int32, device=dev)  # starts, counts
    ws_slot = torch.empty((2 * b + 4, kp), dtype=torch.int64, device=dev)
    ok = torch.empty((1,), dtype=torch.int32, device=dev)
    _update_kernel[(b, nsplit)](
        x, x.stride(0), x.stride(1), x.stride(2), y, keys,
        ws_sum, ws_cnt, ws_tot, ws_mean, ws_norm, ws_bad, ws_pick, ws_cand, ws_ccnt, ws_slot,
        counters, ok, pointers, b, d, hw, k, size, ppu, nsplit,
        CHUNK=chunk, LOG_CHUNK=chunk.bit_length() - 1, KEY_BITS=_KEY_BITS, PIX_BITS=_PIXEL_BITS,
        NSPLIT_P=triton.next_power_of_2(nsplit), KP=kp, BLOCK_D=block_d, BLOCK_P=_BLOCK_P,
        SUM_D=max(16, min(_SUM_D, triton.next_power_of_2(d))), SUM_P=_SUM_P, PPU_P=ppu_p,
        BLOCK_B=_BLOCK_B, F64=f64, num_warps=_UPDATE_WARPS)
    _write_kernel[(b, k)](
        x, x.stride(0), x.stride(1), x.stride(2), ws_tot, ws_mean, ws_norm, ws_pick, ws_slot,
        ok, features, labels, b, d, k, size, ppu,
        KP=kp, BLOCK_D=block_d, PPU_P=ppu_p, F64=f64, num_warps=4)
    return ok
