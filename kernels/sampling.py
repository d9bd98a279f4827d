"""Triton kernels of anchor sampling: two kernels around one sort (docs/design.md §2.5).

The driver (pixcontrast/sampling.py, ``kernels="triton"``) makes four launches in all:

1. ``torch.randint`` draws the random keys: ``R``-bit per pixel (``[B·hw]``) and, when
   ``max_samples < P``, one per pair slot after them (``P = B·hw // (max_views + 1)``).
2. ``sample_histogram`` (one program per image): the image's eligible classes in
   increasing label order, each with its hard and easy counts and the position of its
   first pixel once sorted (a scan of the labels in windows of ``_NBINS - 1`` values:
   any int64 label works; one window covers labels that span fewer than 255 values,
   which is one pass for every dataset); then per pixel the sort key
   ``set << R | key``, ``set = 2·j + easy`` for the ``j``-th eligible class of its image
   (from the first window's table when one window held every label, else a binary
   search), ``2·pimg`` (after every set) for the others. The program
   that finishes last (an integer atomic counter, reset by it) runs the pair stage on the
   ``T`` eligible pairs of all images: ``V``, the ``max_samples`` pairs whose keys rank
   lowest (a bisection on the key value: the same pairs as the torch path's stable
   argsort), the quotas (``_quotas``), each kept pair's first output row, and the padding
   of the unused output rows (``-1`` / ``ignore_index``).
3. ``torch.sort(stable=True)`` of those keys per image: every (class, hard/easy) set is a
   run, its pixels in increasing (key, pixel index) order.
4. ``sample_select`` (one program per block of sorted positions): the rank of a pixel in
   its run is its position minus the run's start; selected when below its set's quota,
   stored at ``first row + (hard quota if easy) + rank``.

The torch path draws the same keys and orders each set by the same (key, index), so the
two return the same bits for one generator state. Deterministic (integer atomics only on
the counter, whose value does not reach any output), no host synchronisation,
CUDA-graph capturable. The counter is the caller's (pixcontrast/sampling.py keeps one
``int32`` per device): two sampling calls must not run concurrently on different streams
of one device.

Workspace ``ws [7, B·pimg]`` int64 (``pimg = max(hw // (max_views + 1), 1)``), per
eligible pair ``(b, j)`` at column ``b·pimg + j``: rows 0 label, 1 hard count, 2 easy
count, 3 sorted position of its first pixel (written by the image's program), 4 first
output row (``-1`` when not kept), 5 hard quota, 6 easy quota (written by the pair stage),
as in csrc/cuda/sampling.h; ``npairs [B]``; ``lut [B, 256]``: the first window's bin ->
pair index.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["sample_histogram", "sample_select", "rand_bits", "pairs_per_image"]

_BLOCK = 2048          # pixels per step of the histogram kernel
_PAIR_BLOCK = 256      # pairs per step of the pair stage
_NBINS = 256           # histogram bins of one label window; the last is the junk bin
_NUM_WARPS = 4
_HIST_WARPS = 16       # one program per image: a wide one (AOT: 86 regs, no spills)
_SELECT_BLOCK = 1024   # sorted positions per program of the select kernel

def pairs_per_image(hw: int, max_views: int) -> int:
    """Slots per image for its eligible pairs (at least one, so buffers are never empty)."""
    return max(hw // (max_views + 1), 1)


def rand_bits(hw: int, max_views: int) -> int:
    """Random bits per key: the sort key ``set << R | key`` must fit 63 bits."""
    return min(62, 63 - (2 * pairs_per_image(hw, max_views)).bit_length())


@triton.jit
def _quotas(hard, easy, views):
    """Same rule as pixcontrast.sampling.sampling_quotas (integers; x ≥ V/2 as 2x ≥ V)."""
    half = views // 2
    many_hard = 2 * hard >= views
    both = many_hard & (2 * easy >= views)
    q_hard = tl.where(both, half, tl.where(many_hard, views - easy, hard))
    q_easy = tl.where(both, views - half, tl.where(many_hard, easy, views - hard))
    return q_hard, q_easy


@triton.jit
def _pair_stage(ws_ptr, npairs_ptr, pair_key_ptr, out_idx_ptr, out_lab_ptr, B, pimg,
                max_samples, max_views, ignore_index, rand_bits,
                PAIR_BLOCK: tl.constexpr):
    """V, the kept pairs, their quotas and first rows, the padding (one program)."""
    cols = B * pimg
    offs = tl.arange(0, PAIR_BLOCK)
    total = tl.zeros((), tl.int64)
    for b0 in range(0, B, PAIR_BLOCK):
        nb = tl.load(npairs_ptr + b0 + offs, mask=b0 + offs < B, other=0, volatile=True)
        total += tl.sum(nb, axis=0)
    views = tl.minimum(tl.maximum(max_samples // tl.maximum(total, 1), 1), max_views)
    # The kept pairs are the max_samples lowest (key, index): threshold key t (the
    # max_samples-th smallest), all keys < t, and the first `need` pairs with key == t.
    t = tl.full((), 1, tl.int64) << rand_bits      # above every key: all kept
    need = tl.zeros((), tl.int64)
    if total > max_samples:
        lo = tl.zeros((), tl.int64)
        hi = t - 1
        while lo < hi:
            mid = lo + (hi - lo) // 2
            le = tl.zeros((), tl.int64)
            for g0 in range(0, total, PAIR_BLOCK):
                k = tl.load(pair_key_ptr + g0 + offs, mask=g0 + offs < total, other=t)
                le += tl.sum((k <= mid).to(tl.int64), axis=0)
            go_up = le < max_samples
            lo = tl.where(go_up, mid + 1, lo)
            hi = tl.where(go_up, hi, mid)
        t = lo
        below = tl.zeros((), tl.int64)
        for g0 in range(0, total, PAIR_BLOCK):
            k = tl.load(pair_key_ptr + g0 + offs, mask=g0 + offs < total, other=t)
            below += tl.sum((k < t).to(tl.int64), axis=0)
        need = max_samples - below
    # First rows: V × (kept pairs before), in (image, class) order.
    kept_before = tl.zeros((), tl.int64)
    ties_before = tl.zeros((), tl.int64)
    g_base = tl.zeros((), tl.int64)
    for b in range(0, B):
        nb = tl.load(npairs_ptr + b, volatile=True)
        for j0 in range(0, nb, PAIR_BLOCK):
            j = j0 + offs
            m = j < nb
            col = b * pimg + j
            n_keys = tl.where(total > max_samples, nb, 0)   # keys exist only then
            k = tl.load(pair_key_ptr + g_base + j, mask=j < n_keys, other=0)
            tie = m & (k == t)
            tie_rank = ties_before + tl.cumsum(tie.to(tl.int64), axis=0) - tie.to(tl.int64)
            kept = m & ((k < t) | (tie & (tie_rank < need)))
            kept64 = kept.to(tl.int64)
            row = (kept_before + tl.cumsum(kept64, axis=0) - kept64) * views
            hard = tl.load(ws_ptr + 1 * cols + col, mask=m, other=0, volatile=True)
            easy = tl.load(ws_ptr + 2 * cols + col, mask=m, other=0, volatile=True)
            q_hard, q_easy = _quotas(hard, easy, views)
            tl.store(ws_ptr + 4 * cols + col, tl.where(kept, row, -1), mask=m)
            tl.store(ws_ptr + 5 * cols + col, q_hard, mask=m)
            tl.store(ws_ptr + 6 * cols + col, q_easy, mask=m)
            kept_before += tl.sum(kept64, axis=0)
            ties_before += tl.sum(tie.to(tl.int64), axis=0)
        g_base += nb
    # Unused rows: index -1, label ignore_index.
    used = kept_before * views
    for r0 in range(0, max_samples, PAIR_BLOCK):
        r = r0 + offs
        m = (r < max_samples) & (r >= used)
        tl.store(out_idx_ptr + r, tl.full((PAIR_BLOCK,), -1, tl.int64), mask=m)
        tl.store(out_lab_ptr + r, tl.zeros((PAIR_BLOCK,), tl.int64) + ignore_index, mask=m)


@triton.jit
def _histogram_kernel(lab_ptr, pred_ptr, key_ptr, sort_key_ptr, ws_ptr, npairs_ptr, lut_ptr,
                      counter_ptr, out_idx_ptr, out_lab_ptr,
                      B, hw, pimg, max_samples, max_views, ignore_index, rand_bits,
                      BLOCK: tl.constexpr, NBINS: tl.constexpr, SEARCH_STEPS: tl.constexpr,
                      PAIR_BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    cols = B * pimg
    img = b * hw
    col0 = b * pimg
    offs = tl.arange(0, BLOCK)
    big = tl.full((), 9223372036854775807, tl.int64)
    # 1. The smallest valid label.
    lo = big
    more = tl.zeros((), tl.int1)
    for p0 in range(0, hw, BLOCK):
        m = p0 + offs < hw
        lab = tl.load(lab_ptr + img + p0 + offs, mask=m, other=0).to(tl.int64)
        valid = m & (lab != ignore_index)
        lo = tl.minimum(lo, tl.min(tl.where(valid, lab, big), axis=0))
        more = more | (tl.max(valid.to(tl.int32), axis=0) > 0)
    # 2. Windows [lo, lo + NBINS - 1) in increasing order: hard/easy histograms, the
    #    eligible classes appended in label order.
    npairs = tl.zeros((), tl.int64)
    start = tl.zeros((), tl.int64)
    bins = tl.arange(0, NBINS)
    lo0 = lo
    windows = tl.zeros((), tl.int32)
    while more:
        hard_h = tl.zeros((NBINS,), tl.int32)
        easy_h = tl.zeros((NBINS,), tl.int32)
        nxt = big
        nxt_any = tl.zeros((), tl.int1)
        for p0 in range(0, hw, BLOCK):
            m = p0 + offs < hw
            lab = tl.load(lab_ptr + img + p0 + offs, mask=m, other=0).to(tl.int64)
            pred = tl.load(pred_ptr + img + p0 + offs, mask=m, other=0).to(tl.int64)
            valid = m & (lab != ignore_index)
            # lab - lo as uint64: exact for lab >= lo (the window may not wrap past 2^63)
            rel = (lab - lo).to(tl.uint64, bitcast=True)
            after = valid & (lab >= lo)
            inwin = after & (rel < NBINS - 1)
            after = after & ~inwin
            bin_ = tl.where(inwin, rel.to(tl.int32), NBINS - 1)
            is_easy = pred == lab
            hard_h += tl.histogram(tl.where(is_easy, NBINS - 1, bin_), NBINS)
            easy_h += tl.histogram(tl.where(is_easy, bin_, NBINS - 1), NBINS)
            nxt = tl.minimum(nxt, tl.min(tl.where(after, lab, big), axis=0))
            nxt_any = nxt_any | (tl.max(after.to(tl.int32), axis=0) > 0)
        hard64 = hard_h.to(tl.int64)
        easy64 = easy_h.to(tl.int64)
        tot = hard64 + easy64
        elig = (tot > max_views) & (bins < NBINS - 1)
        e64 = elig.to(tl.int64)
        pos = npairs + tl.cumsum(e64, axis=0) - 1
        tot_e = tl.where(elig, tot, 0)
        st = start + tl.cumsum(tot_e, axis=0) - tot_e
        col = col0 + pos
        tl.store(ws_ptr + col, lo + bins.to(tl.int64), mask=elig)
        tl.store(ws_ptr + 1 * cols + col, hard64, mask=elig)
        tl.store(ws_ptr + 2 * cols + col, easy64, mask=elig)
        tl.store(ws_ptr + 3 * cols + col, st, mask=elig)
        # The first window's bin -> pair table (the fast path of step 3).
        first = (tl.zeros((NBINS,), tl.int32) + windows) == 0
        tl.store(lut_ptr + b * NBINS + bins, tl.where(elig, pos, -1), mask=first)
        npairs += tl.sum(e64, axis=0)
        start += tl.sum(tot_e, axis=0)
        windows += 1
        lo = nxt
        more = nxt_any
    tl.store(npairs_ptr + b, npairs)
    # 3. Sort keys: set << R | key, set = 2j + easy for the j-th eligible class, 2·pimg
    #    for the rest. j from the first window's table when one window held every label
    #    (a span under NBINS - 1 values: every dataset), else by a binary search of the
    #    label among the image's eligible ones.
    tl.debug_barrier()  # this program's table stores before its loads
    for p0 in range(0, hw, BLOCK):
        m = p0 + offs < hw
        lab = tl.load(lab_ptr + img + p0 + offs, mask=m, other=0).to(tl.int64)
        pred = tl.load(pred_ptr + img + p0 + offs, mask=m, other=0).to(tl.int64)
        key = tl.load(key_ptr + img + p0 + offs, mask=m, other=0)
        valid = m & (lab != ignore_index)
        if windows == 1:
            rel = (lab - lo0).to(tl.uint64, bitcast=True)
            in_lut = valid & (lab >= lo0) & (rel < NBINS - 1)
            j = tl.load(lut_ptr + b * NBINS + rel.to(tl.int32), mask=in_lut, other=-1)
            found = j >= 0
            j = j.to(tl.int64)
        else:
            j = tl.zeros((BLOCK,), tl.int64)
            j_hi = tl.zeros((BLOCK,), tl.int64) + npairs
            for _ in range(SEARCH_STEPS):
                active = valid & (j < j_hi)
                mid = (j + j_hi) // 2
                v = tl.load(ws_ptr + col0 + mid, mask=active, other=0)
                right = active & (v < lab)
                j = tl.where(right, mid + 1, j)
                j_hi = tl.where(active & ~right, mid, j_hi)
            hit = valid & (j < npairs)
            found = hit & (tl.load(ws_ptr + col0 + j, mask=hit, other=0) == lab)
        set_ = tl.where(found, 2 * j + (pred == lab).to(tl.int64), 2 * pimg)
        tl.store(sort_key_ptr + img + p0 + offs, (set_ << rand_bits) | key, mask=m)
    # 4. The last program to finish runs the pair stage on every image's pairs. (The
    #    barrier orders every thread's stores before the one thread's release; the pair
    #    stage loads the other programs' results with volatile.)
    tl.debug_barrier()
    done = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
    if done == B - 1:
        _pair_stage(ws_ptr, npairs_ptr, key_ptr + B * hw, out_idx_ptr, out_lab_ptr, B, pimg,
                    max_samples, max_views, ignore_index, rand_bits, PAIR_BLOCK)
        tl.atomic_xchg(counter_ptr, 0)


@triton.jit
def _select_kernel(sorted_ptr, perm_ptr, ws_ptr, out_idx_ptr, out_lab_ptr,
                   B, hw, pimg, max_samples, rand_bits, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    cols = B * pimg
    m = p < hw
    v = tl.load(sorted_ptr + b * hw + p, mask=m, other=0)
    set_ = v >> rand_bits
    in_set = m & (set_ < 2 * pimg)
    col = b * pimg + (set_ >> 1)
    easy = (set_ & 1) == 1
    row0 = tl.load(ws_ptr + 4 * cols + col, mask=in_set, other=-1)
    in_set = in_set & (row0 >= 0)
    hard_n = tl.load(ws_ptr + 1 * cols + col, mask=in_set, other=0)
    start = tl.load(ws_ptr + 3 * cols + col, mask=in_set, other=0)
    q_hard = tl.load(ws_ptr + 5 * cols + col, mask=in_set, other=0)
    q_easy = tl.load(ws_ptr + 6 * cols + col, mask=in_set, other=0)
    rank = p - start - tl.where(easy, hard_n, 0)
    row = row0 + tl.where(easy, q_hard, 0) + rank
    sel = in_set & (rank < tl.where(easy, q_easy, q_hard)) & (row < max_samples)
    pix = tl.load(perm_ptr + b * hw + p, mask=sel, other=0)
    lab = tl.load(ws_ptr + col, mask=sel, other=0)
    tl.store(out_idx_ptr + row, b * hw + pix, mask=sel)
    tl.store(out_lab_ptr + row, lab, mask=sel)


def sample_histogram(labels: Tensor, predictions: Tensor, keys: Tensor, counter: Tensor,
                     max_samples: int, max_views: int, ignore_index: int
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Kernel 2 of the module doc: ``(sort_keys [B, hw], ws [7, B·pimg], out_idx, out_lab)``.

    ``labels``/``predictions`` ``[B, hw]`` contiguous, any integer dtype; ``keys`` int64,
    ``B·hw`` pixel keys then the pair keys (when ``max_samples < P``); ``counter``: one
    int32, zero (left zero: the last program resets it). ``out_idx`` /
    ``out_lab [max_samples]`` come back with their unused rows filled; ``sample_select``
    writes the rest.
    """
    b, hw = labels.shape
    dev = labels.device
    pimg = pairs_per_image(hw, max_views)
    sort_keys = torch.empty((b, hw), dtype=torch.int64, device=dev)
    ws = torch.empty((7, b * pimg), dtype=torch.int64, device=dev)
    npairs = torch.empty((b,), dtype=torch.int64, device=dev)
    lut = torch.empty((b, _NBINS), dtype=torch.int64, device=dev)
    out_idx = torch.empty((max_samples,), dtype=torch.int64, device=dev)
    out_lab = torch.empty((max_samples,), dtype=torch.int64, device=dev)
    _histogram_kernel[(b,)](
        labels, predictions, keys, sort_keys, ws, npairs, lut, counter, out_idx, out_lab,
        b, hw, pimg, max_samples, max_views, ignore_index, rand_bits(hw, max_views),
        BLOCK=_BLOCK, NBINS=_NBINS, SEARCH_STEPS=pimg.bit_length(), PAIR_BLOCK=_PAIR_BLOCK,
        num_warps=_HIST_WARPS)
    return sort_keys, ws, out_idx, out_lab


def sample_select(sorted_keys: Tensor, perm: Tensor, ws: Tensor, out_idx: Tensor,
                  out_lab: Tensor, max_views: int) -> None:
    """Kernel 4 of the module doc: writes the selected pixels into ``out_idx``/``out_lab``."""
    b, hw = sorted_keys.shape
    grid = (b, triton.cdiv(hw, _SELECT_BLOCK))
    _select_kernel[grid](sorted_keys, perm, ws, out_idx, out_lab, b, hw,
                         pairs_per_image(hw, max_views), out_idx.numel(),
                         rand_bits(hw, max_views), BLOCK=_SELECT_BLOCK, num_warps=_NUM_WARPS)
