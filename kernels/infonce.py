"""Triton kernels of the per-positive InfoNCE (docs/design.md §1; contract in csrc/ops.cpp).

Two launchers, plain Python functions on tensors (pixcontrast/infonce.py wraps them as
``torch.library`` custom ops):

``infonce_forward(anchors, labels, contrast, contrast_labels, self_contrast, inv_temperature,
ignore_index, normalize, need_grad)`` -> ``(row_loss, lse, pos_sig, num_pos, row_grad)``
    ``anchors [N, D]`` and ``contrast [M, D]`` float32 / bfloat16 / float16 with any strides,
    ``labels [N]`` and ``contrast_labels [M]`` int64. Outputs float32: four ``[N]`` vectors
    and ``row_grad [N, D]`` (``[0, D]`` when ``need_grad`` is false). Equivalent PyTorch::

        row_loss, lse, pos_sig, num_pos = pixcontrast.infonce.reference_row_terms(
            anchors, labels, contrast, contrast_labels, self_contrast, inv_temperature,
            ignore_index, normalize)
        # row_grad[i] = d row_loss[i] / d anchors[i], the row term only (columns constant)

With ``supcon=True`` both compute SupCon's L_out on the same passes (docs/design.md §1.5):
the negatives pass sums over every valid column but the row's own, the positives pass adds
``lse - s`` and counts 1 per positive (so ``pos_sig = num_pos``) with V weight 1, and the
column pass gives every valid column the softmax term and the positives ``-row_coef`` on
top. On the fast path with rounded tensor-core weights (16-bit or TF32 dots), U leaves the
positives out and V weights them ``1 - |P|·e^{s - lse}`` (as ``e^{s - m}/l``): each
positive's whole row-gradient weight is rounded once (``POSITIVES_IN_V``).

``infonce_backward_columns(..., lse, pos_sig, row_coef)`` -> ``(grad_contrast [M, D],
grad_anchor_columns [N, D] or [0, D])`` float32: the gradient of ``Σ_i row_coef_i·|P(i)|·
row_loss_i`` with respect to the columns (the contrast rows, and the anchors seen as columns
when ``self_contrast``).

How the work is laid out (notes and compiled-kernel figures: docs/notes/infonce-triton.md):

* Columns are one or two *segments*: the anchors themselves (``self_contrast``; the pair
  ``j == i`` excluded) and the ``M`` contrast rows. Each segment is its own launch with its
  own base pointer, strides and dtype, so the contrast tensor is never copied or
  concatenated.
* Prep (``_prepare``): the anchors sorted by label once (row ``r`` of every kernel is anchor
  ``perm[r]``), int32 class *keys* (a valid row's key is the sorted position of the first
  row of its class, an ignored row's -3; a column's key is that of its class among the
  anchors, -1 when ignored or padding, -2 for a class no valid anchor has: a negative of
  every row), one pass over each segment (``_prep_kernel``: inverse norms, keys by binary
  search, the finite check) and the row scale ``inv_norm·τ⁻¹`` (times log2(e) on the fast
  path): no kernel recomputes a norm or compares int64 labels per tile.
* Logit units: with ``normalize`` and τ >= 0.03 (``_FAST_MIN_TEMPERATURE``) ``|s| <= 1/τ``,
  so the *fast path* works in base-2 units (log2(e) folded into the row scale) with the
  fixed shift ``m = log2(e)/τ``: no running max, no rescale. Otherwise the logits stay in
  natural units (they reach 1e5 and more unnormalised) with an online max that rescales
  ``l`` and ``U`` only when a row's max grows by more than ``_RESCALE_THRESHOLD``.
* ``_negatives_kernel``, grid ``(row blocks, splits)`` sized to the SM count:
  flash-decoding over the negatives, ``l = Σ e^(s-m)`` and, when a gradient is wanted,
  ``U = Σ e^(s-m) ĉ``. The mask is an int32 key test; the general path skips it on tiles
  whose keys cannot match a row of the block (the rows are label-sorted, so a block spans
  a narrow key range; the fast path masks every tile, see the kernel). Partials go to a
  ``[splits, N(, D)]`` fp32 workspace merged in a fixed order (``_lse_kernel``, then the
  finalise): deterministic, no float atomics.
* ``_positives_kernel``, a persistent grid over a *work list*: the columns of each segment
  sorted by key (a class-sorted bank stays in place, any other contrast set is grouped),
  so the positives of a class are one contiguous range; a work item is (block of up to
  ``BLOCK_N`` rows of one class, a chunk of column tiles of that class's range), every
  item the same number of tiles except a class's last, built on the device by the
  single-program ``_plan_kernel``. Each item writes its own partial rows; the finalise
  merges them in item order.
* ``_finalize_kernel``, grid ``(row blocks, D chunks)``: merges the partials, writes the
  per-row outputs and the row gradient in the caller's row order; ``_normalize_rows_kernel``
  backprops the anchor normalisation in place.
* ``_columns_backward_kernel``, grid (column tiles, row-block groups): recomputes the logits
  against the anchor row blocks of its group and accumulates ``Gᵀ·Â``; with one group it
  backprops the column normalisation and writes the gradient, with several (few column
  tiles: self-contrast) each writes an fp32 partial that ``_merge_columns_kernel`` sums in
  group order before the normalisation backprop (``_plan_row_groups``). Same
  ``_logits`` helper, same operand values (the prep buffers are recomputed bit-identically),
  same column tiles and per-warpgroup MMAs as the negatives pass (``_gpu_config``), so the
  recomputed logits are bit-identical to those lse was built from (this matters
  unnormalised, where one ulp of ``s`` is a visible factor in e^{s - lse}).

No host synchronisation anywhere (no ``.item()``, ``.nonzero()``, data-dependent Python
control flow; data-dependent counts are read by the kernels from device memory); empty
inputs return without launching.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from pixcontrast._checks import assert_finite

__all__ = ["infonce_forward", "infonce_backward_columns"]

_MAX_DIM = 512  # BLOCK_D is the padded full D kept on chip; past 512 it no longer fits.
_WORKSPACE_BYTES = 32 * 1024 * 1024  # cap of the negatives' split workspace
_FAST_MIN_TEMPERATURE = 0.03  # fast path: |s|·log2(e) <= 48, e^(s - 1/τ) >= 2^-96 (normal)
_RESCALE_THRESHOLD = tl.constexpr(8.0)  # general path: rescale once a row's max grew by more
#                                          (natural units: p <= e^8 ≈ 3e3)
_LOG2E = 1.4426950408889634


# --------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------

@triton.jit
def _load_tile(ptr, idx, mask, stride_0, stride_1, offs_d, D, UPCAST: tl.constexpr):
    """Rows ``idx`` (int64, masked by ``mask``) of a [rows, D] matrix, zero-padded to BLOCK_D."""
    x = tl.load(ptr + idx[:, None] * stride_0 + offs_d[None, :] * stride_1,
                mask=mask[:, None] & (offs_d[None, :] < D), other=0.0)
    if UPCAST:  # mixed anchor/contrast dtypes: the dots run in fp32 like the reference
        x = x.to(tl.float32)
    return x


@triton.jit
def _log2(x, GPU_MATH: tl.constexpr):
    """log2 of fp32 ``x``: one MUFU.LG2 (``lg2.approx``, absolute error ~2^-22 on [1, 2])
    on a GPU, where tl.log2 is libdevice's 12-FMA polynomial; numpy's under the
    interpreter, which cannot run inline PTX."""
    if GPU_MATH:
        y = tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                      is_pure=True, pack=1)
    else:
        y = tl.log2(x)
    return y


@triton.jit
def _softplus_sigmoid(x2, GPU_MATH: tl.constexpr):
    """softplus(x) (natural units) and σ(x) of ``x = x2·ln 2``, stable for any x including
    -inf (both 0 there), from one exp2, one reciprocal and one log2 (MUFU):
    softplus = ln2·(max(x2, 0) + log2(1 + 2^-|x2|)), σ = 1/(1 + 2^-x2).

    log2(1 + e) for e in [0, 1] has an absolute error of ~2^-22 on a GPU (lg2.approx):
    ~1e-7 per positive pair on a loss term that is >= ln 2 whenever the positive is not
    far above every negative, and < 2^-22 relative to the loss otherwise.
    """
    e = tl.exp2(-tl.abs(x2))
    r = tl.fdiv(tl.full(e.shape, 1.0, tl.float32), 1.0 + e)  # approximate: no IEEE division
    softplus = (tl.maximum(x2, 0.0) + _log2(1.0 + e, GPU_MATH)) * 0.6931471805599453
    sigmoid = tl.where(x2 >= 0.0, r, e * r)
    return softplus, sigmoid


@triton.jit
def _weights_for_dot(w, x, ROUND_BF16: tl.constexpr):
    """fp32 weights in the dtype of the tensor-core operand ``x``.

    ROUND_BF16 (interpreter only): the bf16 tiles were upcast to fp32 to dodge the Triton
    interpreter's bf16 tl.dot (it multiplies the raw uint16 bit patterns, Triton 3.9); the
    weights are rounded through bf16 so the result still carries the GPU kernel's rounding.
    """
    if ROUND_BF16:
        w = w.to(tl.bfloat16).to(tl.float32)
    return w.to(x.dtype)


@triton.jit
def _scaled_dot(w, x, acc, RESCALE: tl.constexpr, ROUND_BF16: tl.constexpr,
                INPUT_PRECISION: tl.constexpr):
    """``acc + w @ x`` with the fp32 weights ``w`` cast to x's dtype for the tensor cores.

    fp16 has a narrow exponent range: weights like p·inv_norm (inputs of norm 1e4) would
    land in fp16 subnormals. With RESCALE each row of ``w`` is divided by its max |w| before
    the cast and the product row multiplied back in fp32 (bf16 and fp32 keep fp32's range
    and skip this).
    """
    if RESCALE:
        scale = tl.max(tl.abs(w), axis=1)
        scale = tl.where(scale > 0.0, scale, 1.0)
        prod = tl.dot(_weights_for_dot(w / scale[:, None], x, ROUND_BF16), x,
                      input_precision=INPUT_PRECISION)
        acc = acc + prod * scale[:, None]
    else:
        acc = tl.dot(_weights_for_dot(w, x, ROUND_BF16), x, acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit
def _logits(a, c, row_scale, col_scale, INPUT_PRECISION: tl.constexpr):
    """s = row_scale·(a cᵀ)·col_scale for a [BLOCK_N, BLOCK_D] row tile and a [BLOCK_M,
    BLOCK_D] column tile (row_scale = τ⁻¹/‖a‖, times log2(e) on the fast path; col_scale =
    1/‖c‖, 0 for padding): the norms are applied to the fp32 product, so no normalised copy
    of either tile is made.

    The negatives pass and the column backward must get bit-identical logits (same helper,
    same scale buffers, same column tiles and MMA shape): with unnormalised inputs the
    logits reach ~1e5-1e9, where one ulp is >= 1/128, and the backward's e^{s - lse} is
    only right if s_max - lse is computed from the same s as lse was. That also needs every
    launch compiled without FMA contraction (``_launch_options``), so that ``s`` is rounded
    the same way in every kernel.
    """
    s = tl.dot(a, tl.trans(c), input_precision=INPUT_PRECISION)
    return s * row_scale[:, None] * col_scale[None, :]


@triton.jit
def _exp_units(FAST: tl.constexpr):
    """Factor from logit units to base-2 exponents: 1 on the fast path (base-2 logits),
    log2(e) otherwise (natural logits)."""
    if FAST:
        f = 1.0
    else:
        f = 1.4426950408889634
    return f


@triton.jit
def _search(sorted_ptr, n, q, steps, RIGHT: tl.constexpr):
    """Per lane, the first index i in [0, n] with sorted[i] > q (RIGHT) or >= q: a binary
    search of ``steps`` >= bit_length(n) rounds over an ascending vector."""
    lo = tl.zeros(q.shape, tl.int64)
    hi = lo + n
    for _ in range(0, steps):
        active = lo < hi
        mid = (lo + hi) // 2
        v = tl.load(sorted_ptr + mid, mask=active, other=0)
        if RIGHT:
            up = v <= q
        else:
            up = v < q
        lo = tl.where(active & up, mid + 1, lo)
        hi = tl.where(active & ~up, mid, hi)
    return lo


@triton.jit
def _row_stats(x_ptr, stride_0, stride_1, idx, mask, D, NORMALIZE: tl.constexpr,
               CHECK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows ``idx`` of x: ``1/max(‖x_r‖, 1e-12)`` (F.normalize's clamp; 1 without
    normalisation) and, with CHECK, ``Σ_d x_rd·0``: 0 for a finite row, NaN otherwise (the
    input's finite check, in the same read; nothing folds it, as every launch is compiled
    without fast math or FMA contraction)."""
    acc = tl.zeros([BLOCK_R], tl.float32)
    bad = tl.zeros([BLOCK_R], tl.float32)
    if NORMALIZE or CHECK:
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            x = tl.load(x_ptr + idx[:, None] * stride_0 + offs_d[None, :] * stride_1,
                        mask=mask[:, None] & (offs_d[None, :] < D), other=0.0)
            x = x.to(tl.float32)
            if NORMALIZE:
                acc += tl.sum(x * x, axis=1)
            if CHECK:
                bad += tl.sum(x * 0.0, axis=1)
    if NORMALIZE:
        inv = 1.0 / tl.maximum(tl.sqrt(acc), 1e-12)
    else:
        inv = tl.full([BLOCK_R], 1.0, tl.float32)
    return inv, bad


@triton.jit
def _prep_kernel(
    x_ptr, stride_0, stride_1, labels_ptr, stride_labels,
    sorted_ptr, perm_ptr,                    # the anchors' sorted labels and permutation
    inv_ptr, key_ptr,                        # per row of x, in x's order
    bad_ptr,                                 # per program: 0, or NaN for a NaN/Inf in x
    row_key_ptr, row_scale_ptr, class_end_ptr,   # ANCHORS: per sorted row
    R, N, D, ignore_index, scale, steps,
    NORMALIZE: tl.constexpr, CHECK: tl.constexpr, ANCHORS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One read of a segment (x = anchors or contrast rows): inverse norms, finite check,
    and each row's key as a column (its class's first sorted anchor row; -1 ignored, -2 a
    class no anchor has). ANCHORS (x = the anchors, R = N) also gives, per sorted row r,
    the row key (-3 ignored), the end of its class and the row scale ``inv‖a‖·scale``."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask = rows < R
    inv, bad = _row_stats(x_ptr, stride_0, stride_1, rows, mask, D, NORMALIZE, CHECK,
                          BLOCK_R, BLOCK_D)
    tl.store(inv_ptr + rows, inv, mask=mask)
    if CHECK:
        tl.store(bad_ptr + tl.program_id(0), tl.sum(bad))
    z = tl.load(labels_ptr + rows * stride_labels, mask=mask, other=ignore_index)
    idx = _search(sorted_ptr, N, z, steps, False)
    found = (tl.load(sorted_ptr + tl.minimum(idx, N - 1), mask=mask, other=0) == z) & (idx < N)
    key = tl.where(z == ignore_index, -1, tl.where(found, idx, -2))
    tl.store(key_ptr + rows, key.to(tl.int32), mask=mask)
    if ANCHORS:
        src = tl.load(perm_ptr + rows, mask=mask, other=0)
        inv_sorted, _ = _row_stats(x_ptr, stride_0, stride_1, src, mask, D, NORMALIZE, False,
                                   BLOCK_R, BLOCK_D)
        tl.store(row_scale_ptr + rows, inv_sorted * scale, mask=mask)
        y = tl.load(sorted_ptr + rows, mask=mask, other=ignore_index)
        first = _search(sorted_ptr, N, y, steps, False)
        tl.store(row_key_ptr + rows, tl.where(y != ignore_index, first, -3).to(tl.int32),
                 mask=mask)
        tl.store(class_end_ptr + rows, _search(sorted_ptr, N, y, steps, True), mask=mask)


@triton.jit
def _plan_rows(row_key_ptr, r0, N, BLOCK_N: tl.constexpr, BLOCK: tl.constexpr):
    """Sorted rows r0 .. r0 + BLOCK of the plan: in range, their keys (a class's first row),
    valid (not ignored) and whether each starts a class row block."""
    rows = r0 + tl.arange(0, BLOCK)
    mask = rows < N
    key = tl.load(row_key_ptr + rows, mask=mask, other=-3)
    valid = mask & (key >= 0)
    return rows, mask, key, valid, valid & ((rows - key.to(tl.int64)) % BLOCK_N == 0)


@triton.jit
def _plan_kernel(
    row_key_ptr, class_end_ptr,              # sorted order
    skey0_ptr, m0, steps0, skey1_ptr, m1, steps1,   # each segment's keys, sorted
    col_begin_ptr, col_end_ptr,              # [S, N] out: a row's class range in them
    block_end_ptr, num_pos_ptr, pos_first_ptr, pos_count_ptr, pos_off_ptr,
    item_owner_ptr, item_chunk_ptr, item_base_ptr, bounds_ptr, tiles_per_item_ptr,
    N, target,
    NUM_SEGMENTS: tl.constexpr, SELF_FIRST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK: tl.constexpr,
):
    """The positives' work list, in one program (a few µs): see ``_plan_positives``."""
    # Pass 1: each row's class range in every segment, |P|, the class row blocks (a block
    # starts at its class's first row and every BLOCK_N rows after), the tile total and
    # the number of (block, segment) pairs with a tile.
    total = tl.zeros([], tl.int64)
    blocks = tl.zeros([], tl.int64)
    for r0 in range(0, N, BLOCK):
        rows, mask, key, valid, start = _plan_rows(row_key_ptr, r0, N, BLOCK_N, BLOCK)
        block_end = tl.minimum(rows + BLOCK_N, tl.load(class_end_ptr + rows, mask=mask, other=0))
        tl.store(block_end_ptr + rows, block_end, mask=mask)
        npos = tl.zeros([BLOCK], tl.int64)
        for s in tl.static_range(NUM_SEGMENTS):
            if s == 0:
                c0 = _search(skey0_ptr, m0, key, steps0, False)
                c1 = _search(skey0_ptr, m0, key, steps0, True)
            else:
                c0 = _search(skey1_ptr, m1, key, steps1, False)
                c1 = _search(skey1_ptr, m1, key, steps1, True)
            tl.store(col_begin_ptr + s * N + rows, c0, mask=mask)
            tl.store(col_end_ptr + s * N + rows, c1, mask=mask)
            npos += c1 - c0
            if SELF_FIRST and s == 0:  # the self pair is in the self segment's range
                npos -= valid.to(tl.int64)
            tiles = tl.where(start, (c1 - c0 + BLOCK_M - 1) // BLOCK_M, 0)
            total += tl.sum(tiles)
            blocks += tl.sum((tiles > 0).to(tl.int64))
        tl.store(num_pos_ptr + rows, tl.where(valid, npos, 0).to(tl.float32), mask=mask)
    # Items sized for target - blocks: each block's last item may be short, and
    # sum(ceil(T_b / t)) <= total / t + blocks <= target, so no program of a one-wave grid
    # runs a second item (ceil(total / target) gave up to target + blocks items: some
    # programs ran two, and the pass took twice as long).
    room = tl.maximum(target - blocks, 1)
    tiles_per_item = tl.maximum((total + room - 1) // room, 1)
    tl.store(tiles_per_item_ptr, tiles_per_item)
    tl.debug_barrier()
    # Pass 2: items, numbered segment by segment and row by row; a block with T tiles has
    # ceil(T / tiles_per_item) items, each with its block's rows of partials.
    num_items = tl.zeros([], tl.int64)
    num_rows = tl.zeros([], tl.int64)
    tl.store(bounds_ptr, num_items)
    for s in tl.static_range(NUM_SEGMENTS):
        for r0 in range(0, N, BLOCK):
            rows, mask, key, valid, start = _plan_rows(row_key_ptr, r0, N, BLOCK_N, BLOCK)
            c0 = tl.load(col_begin_ptr + s * N + rows, mask=mask, other=0)
            c1 = tl.load(col_end_ptr + s * N + rows, mask=mask, other=0)
            tiles = tl.where(start, (c1 - c0 + BLOCK_M - 1) // BLOCK_M, 0)
            q = (tiles + tiles_per_item - 1) // tiles_per_item
            nrows = tl.load(block_end_ptr + rows, mask=mask, other=0) - rows
            first = num_items + tl.cumsum(q, 0) - q
            width = q * nrows
            base = num_rows + tl.cumsum(width, 0) - width
            tl.store(pos_first_ptr + s * N + rows, first, mask=start)
            tl.store(pos_count_ptr + s * N + rows, q, mask=start)
            for e in range(0, tl.max(q)):
                take = start & (e < q)
                tl.store(item_owner_ptr + first + e, s * N + rows, mask=take)
                tl.store(item_chunk_ptr + first + e, tl.zeros([BLOCK], tl.int64) + e, mask=take)
                tl.store(item_base_ptr + first + e, base + e * nrows, mask=take)
            num_items += tl.sum(q)
            num_rows += tl.sum(width)
        tl.store(bounds_ptr + s + 1, num_items)
    tl.debug_barrier()
    # Pass 3: every row gets its block's items (in item order) and its offset in them.
    for r0 in range(0, N, BLOCK):
        rows, mask, key, valid, _ = _plan_rows(row_key_ptr, r0, N, BLOCK_N, BLOCK)
        k64 = key.to(tl.int64)
        block_start = tl.where(valid, k64 + (rows - k64) // BLOCK_N * BLOCK_N, rows)
        inner = valid & (block_start != rows)
        for s in tl.static_range(NUM_SEGMENTS):
            first = tl.load(pos_first_ptr + s * N + block_start, mask=inner, other=0)
            count = tl.load(pos_count_ptr + s * N + block_start, mask=inner, other=0)
            tl.store(pos_first_ptr + s * N + rows, first, mask=inner)
            tl.store(pos_count_ptr + s * N + rows, count, mask=mask & ~(valid & ~inner))
        tl.store(pos_off_ptr + rows, tl.where(valid, rows - block_start, 0), mask=mask)


# --------------------------------------------------------------------------------------
# Forward kernels
# --------------------------------------------------------------------------------------

@triton.jit
def _negatives_kernel(
    a_ptr, stride_a_n, stride_a_d,
    perm_ptr, row_key_ptr, row_scale_ptr,    # sorted order: row r is anchor perm[r]
    c_ptr, stride_c_m, stride_c_d,
    col_key_ptr, col_scale_ptr,              # the segment's own column order
    m_ws_ptr, l_ws_ptr, u_ws_ptr,            # [slots, N], [slots, N], [slots, N, D] fp32
    N, M_seg, D, tiles_per_split, slot_offset, shift,
    FAST: tl.constexpr, NEED_GRAD: tl.constexpr,
    UPCAST: tl.constexpr, RESCALE: tl.constexpr, ROUND_BF16: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    SUPCON: tl.constexpr = False, EXCLUDE_SELF: tl.constexpr = False,
    POSITIVES_IN_V: tl.constexpr = False,
):
    # SUPCON: the sum runs over every valid column (positives included) but the row's own
    # (EXCLUDE_SELF: the self segment, columns in the caller's order). POSITIVES_IN_V
    # (SupCon with weights rounded for the tensor cores): U leaves the positives out.
    pid_s = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    y = tl.load(row_key_ptr + rows, mask=row_mask, other=-3)
    src = tl.load(perm_ptr + rows, mask=row_mask, other=0)
    a = _load_tile(a_ptr, src, row_mask, stride_a_n, stride_a_d, offs_d, D, UPCAST)
    row_scale = tl.load(row_scale_ptr + rows, mask=row_mask, other=0.0)
    # Key range of the block's valid rows (general path: a tile without a column key in it,
    # and without ignored or padding columns, holds negatives only). Ignored and padding
    # rows take part unmasked: their partials are finite and the finalise drops them.
    key_lo = tl.min(tl.where(y >= 0, y, 2147483647))
    key_hi = tl.max(y)

    if FAST:
        m = tl.full([BLOCK_N], 1.0, tl.float32) * shift
    else:
        m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_N], tl.float32)
    u = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    t_begin = pid_s * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, tl.cdiv(M_seg, BLOCK_M))
    for t in range(t_begin, t_end):
        cols = t * BLOCK_M + tl.arange(0, BLOCK_M)
        col_mask = cols < M_seg
        z = tl.load(col_key_ptr + cols, mask=col_mask, other=-1)
        col_scale = tl.load(col_scale_ptr + cols, mask=col_mask, other=0.0)
        c = _load_tile(c_ptr, cols, col_mask, stride_c_m, stride_c_d, offs_d, D, UPCAST)
        s = _logits(a, c, row_scale, col_scale, INPUT_PRECISION)
        # The self pair (same anchor) has equal keys, so it is never a negative.
        if FAST:
            # |s| <= 1/τ in base-2 units: the fixed shift keeps p in (2^-96, 1]; ignored and
            # padding columns get an infinite shift (p = 0). The class mask is applied on
            # every tile: skipping it on tiles without a clash (a data-dependent branch)
            # made ptxas serialise the wgmmas (C7515), for ~80 instructions saved.
            col_shift = tl.where(z != -1, shift, float("inf"))
            if SUPCON:
                p = tl.exp2(s - col_shift[None, :])
                if EXCLUDE_SELF:
                    p = tl.where(src[:, None] != cols[None, :], p, 0.0)
            else:
                p = tl.where(y[:, None] != z[None, :], tl.exp2(s - col_shift[None, :]), 0.0)
        else:
            if SUPCON:
                keep = (z != -1)[None, :]
                if EXCLUDE_SELF:
                    keep = keep & (src[:, None] != cols[None, :])
                s = tl.where(keep, s, float("-inf"))
            # Tiles whose keys cannot match a row of the block (nor be ignored) skip the
            # mask; this path branches for the lazy rescale anyway.
            elif tl.max(((z == -1) | ((z >= key_lo) & (z <= key_hi))).to(tl.int32)) > 0:
                s = tl.where((y[:, None] != z[None, :]) & (z != -1)[None, :], s,
                             float("-inf"))
            m_tile = tl.max(s, axis=1)
            if tl.max((m_tile > m + _RESCALE_THRESHOLD).to(tl.int32)) > 0:
                m_new = tl.maximum(m, m_tile)
                # While a row has seen no negative its max is -inf; alpha = 2^-inf = 0.
                alpha = tl.exp2((m - tl.where(m_new == float("-inf"), 0.0, m_new))
                                * 1.4426950408889634)
                l = l * alpha
                if NEED_GRAD:
                    u = u * alpha[:, None]
                m = m_new
            # Natural units: (s - m)·log2(e), not s·log2(e) - m·log2(e), which would lose
            # the difference when |s| is large.
            m_safe = tl.where(m == float("-inf"), 0.0, m)
            p = tl.exp2((s - m_safe[:, None]) * 1.4426950408889634)
        l += tl.sum(p, axis=1)
        if NEED_GRAD:
            if POSITIVES_IN_V:
                # U over the negatives only: the positives' softmax term goes into V with
                # their -1 (the positives pass), so each positive's weight is rounded for
                # the tensor cores once, as (|P|·softmax - 1), not as two nearly equal
                # terms rounded apart (docs/notes/infonce-triton.md: up to 79x the bf16
                # rounding of the result).
                p = tl.where(y[:, None] != z[None, :], p, 0.0)
            u = _scaled_dot(p * col_scale[None, :], c, u, RESCALE, ROUND_BF16, INPUT_PRECISION)

    slot = slot_offset + pid_s
    tl.store(m_ws_ptr + slot * N + rows, m, mask=row_mask)
    tl.store(l_ws_ptr + slot * N + rows, l, mask=row_mask)
    if NEED_GRAD:
        u_ptrs = u_ws_ptr + (slot * N + rows)[:, None] * D + offs_d[None, :]
        tl.store(u_ptrs, u, mask=row_mask[:, None] & (offs_d[None, :] < D))


@triton.jit
def _merged_lse(m_ws_ptr, l_ws_ptr, rows, row_mask, N, num_slots, FAST: tl.constexpr,
                BLOCK: tl.constexpr):
    """Merge the split partials: (m, l, lse) in logit units, lse = -inf without a negative.

    The same expression in ``_lse_kernel`` and the finalise: one lse for both.
    """
    to_exp2 = _exp_units(FAST)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    for s in range(0, num_slots):
        m = tl.maximum(m, tl.load(m_ws_ptr + s * N + rows, mask=row_mask, other=float("-inf")))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    l = tl.zeros([BLOCK], tl.float32)
    for s in range(0, num_slots):  # fixed order: the merge is deterministic
        m_s = tl.load(m_ws_ptr + s * N + rows, mask=row_mask, other=float("-inf"))
        l_s = tl.load(l_ws_ptr + s * N + rows, mask=row_mask, other=0.0)
        l += l_s * tl.exp2((m_s - m_safe) * to_exp2)
    lse = tl.where(l > 0.0, m_safe + tl.log2(l) / to_exp2, float("-inf"))
    return m_safe, l, lse


@triton.jit
def _lse_kernel(m_ws_ptr, l_ws_ptr, lse_ptr, ml_ptr, N, num_slots, FAST: tl.constexpr,
                STORE_ML: tl.constexpr, BLOCK: tl.constexpr):
    """lse (logit units, sorted order) for the positives pass; STORE_ML: also the merged
    shift m and sum l (``ml[0, r]``, ``ml[1, r]``), so that e^{s - lse} = e^{s - m}/l is
    formed without lse's rounding (|lse| ~ 50 unnormalised: 4e-6 of it)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    row_mask = rows < N
    m_safe, l, lse = _merged_lse(m_ws_ptr, l_ws_ptr, rows, row_mask, N, num_slots, FAST,
                                 BLOCK)
    tl.store(lse_ptr + rows, lse, mask=row_mask)
    if STORE_ML:
        tl.store(ml_ptr + rows, m_safe, mask=row_mask)
        tl.store(ml_ptr + N + rows, l, mask=row_mask)


@triton.jit
def _positives_kernel(
    a_ptr, stride_a_n, stride_a_d,
    perm_ptr, row_scale_ptr, lse_ptr,        # sorted order; lse in logit units
    c_ptr, stride_c_m, stride_c_d,
    col_idx_ptr, col_scale_ptr,              # key-sorted position -> column; per column
    item_owner_ptr, item_chunk_ptr, item_base_ptr, bounds_ptr, tiles_per_item_ptr,
    block_end_ptr, col_begin_ptr, col_end_ptr,   # per sorted row (class row block starts)
    npos_ptr, ml_ptr,                        # sorted order: |P|, [2, N] merged (m, l);
    #                                          read with POSITIVES_IN_V only
    loss_ws_ptr, sig_ws_ptr, v_ws_ptr,       # [P], [P], [P, D]: one row per (item, row)
    N, D, seg_index,
    FAST: tl.constexpr, NEED_GRAD: tl.constexpr, EXCLUDE_SELF: tl.constexpr,
    UPCAST: tl.constexpr, RESCALE: tl.constexpr, ROUND_BF16: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, GPU_MATH: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    SUPCON: tl.constexpr = False, POSITIVES_IN_V: tl.constexpr = False,
):
    # Persistent over this segment's items [bounds[seg], bounds[seg + 1]): every pair of an
    # item is a positive (same key by construction) except padding and the self pair.
    # SUPCON: loss terms L - s (L = lse, finite on a row with a positive), pos_sig terms 1
    # and V weights 1; POSITIVES_IN_V: 1 - |P|·e^{s - L}, the positive's whole row gradient,
    # its softmax part included (the negatives pass leaves positives out of U), with
    # e^{s - L} = e^{s - m}/l (l > 0 on a row with a positive: the positives are in it).
    offs_d = tl.arange(0, BLOCK_D)
    item_begin = tl.load(bounds_ptr + seg_index)
    item_end = tl.load(bounds_ptr + seg_index + 1)
    tiles_per_item = tl.load(tiles_per_item_ptr)
    for item in range(item_begin + tl.program_id(0), item_end, tl.num_programs(0)):
        r0 = tl.load(item_owner_ptr + item) - seg_index * N
        chunk = tl.load(item_chunk_ptr + item)
        base = tl.load(item_base_ptr + item)
        rows = r0 + tl.arange(0, BLOCK_N)
        row_mask = rows < tl.load(block_end_ptr + r0)
        src = tl.load(perm_ptr + rows, mask=row_mask, other=0)
        a = _load_tile(a_ptr, src, row_mask, stride_a_n, stride_a_d, offs_d, D, UPCAST)
        row_scale = tl.load(row_scale_ptr + rows, mask=row_mask, other=0.0)
        lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
        if POSITIVES_IN_V:
            m_row = tl.load(ml_ptr + rows, mask=row_mask, other=0.0)
            npos_l = tl.load(npos_ptr + rows, mask=row_mask, other=0.0) / tl.load(
                ml_ptr + N + rows, mask=row_mask, other=1.0)
        p_begin = tl.load(col_begin_ptr + r0) + chunk * tiles_per_item * BLOCK_M
        p_end = tl.minimum(p_begin + tiles_per_item * BLOCK_M, tl.load(col_end_ptr + r0))
        loss = tl.zeros([BLOCK_N], tl.float32)
        sig_sum = tl.zeros([BLOCK_N], tl.float32)
        v = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for p0 in range(p_begin, p_end, BLOCK_M):
            pcols = p0 + tl.arange(0, BLOCK_M)
            col_mask = pcols < p_end
            cidx = tl.load(col_idx_ptr + pcols, mask=col_mask, other=0)
            col_scale = tl.load(col_scale_ptr + cidx, mask=col_mask, other=0.0)
            c = _load_tile(c_ptr, cidx, col_mask, stride_c_m, stride_c_d, offs_d, D, UPCAST)
            s = _logits(a, c, row_scale, col_scale, INPUT_PRECISION)
            # x = lse - s as a base-2 exponent, -inf where the pair is not a positive (padding
            # columns, the self pair) and where lse = -inf (no negative): softplus = σ = 0.
            # Rows past the block are finite garbage, never stored.
            x2 = (lse[:, None] - s) * _exp_units(FAST) + tl.where(col_mask, 0.0,
                                                                   float("-inf"))[None, :]
            if EXCLUDE_SELF:  # self columns are anchors: column cidx is anchor src
                x2 = tl.where(src[:, None] != cidx[None, :], x2, float("-inf"))
            if SUPCON:
                pair = x2 > float("-inf")
                softplus = tl.where(pair, x2 * 0.6931471805599453, 0.0)
                sigmoid = tl.where(pair, 1.0, 0.0)
                if POSITIVES_IN_V:
                    e = tl.exp2((s - m_row[:, None]) * _exp_units(FAST))
                    weight = tl.where(pair, 1.0 - npos_l[:, None] * e, 0.0)
                else:
                    weight = sigmoid
            else:
                softplus, sigmoid = _softplus_sigmoid(x2, GPU_MATH)
                weight = sigmoid
            loss += tl.sum(softplus, axis=1)
            sig_sum += tl.sum(sigmoid, axis=1)
            if NEED_GRAD:
                v = _scaled_dot(weight * col_scale[None, :], c, v, RESCALE, ROUND_BF16,
                                INPUT_PRECISION)
        out = base + tl.arange(0, BLOCK_N)
        tl.store(loss_ws_ptr + out, loss, mask=row_mask)
        tl.store(sig_ws_ptr + out, sig_sum, mask=row_mask)
        if NEED_GRAD:
            tl.store(v_ws_ptr + out[:, None] * D + offs_d[None, :], v,
                     mask=row_mask[:, None] & (offs_d[None, :] < D))


@triton.jit
def _finalize_kernel(
    perm_ptr, row_key_ptr, npos_ptr,         # sorted order
    m_ws_ptr, l_ws_ptr, u_ws_ptr, num_slots,
    pos_first_ptr, pos_count_ptr, pos_off_ptr, item_base_ptr,   # [S, N], [S, N], [N], items
    loss_ws_ptr, sig_ws_ptr, v_ws_ptr,
    row_loss_ptr, lse_ptr, pos_sig_ptr, num_pos_ptr, row_grad_ptr,   # outputs, caller's order
    N, D, inv_temperature,
    FAST: tl.constexpr, NEED_GRAD: tl.constexpr, NUM_SEGMENTS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Grid (row blocks, D chunks): the per-row scalars come from D chunk 0; every chunk
    # merges its own columns of U and V. All merges in a fixed order: deterministic.
    pid_d = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    valid = row_mask & (tl.load(row_key_ptr + rows, mask=row_mask, other=-3) >= 0)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < D

    m_safe, l, lse = _merged_lse(m_ws_ptr, l_ws_ptr, rows, row_mask, N, num_slots, FAST,
                                 BLOCK_N)
    off = tl.load(pos_off_ptr + rows, mask=valid, other=0)
    loss = tl.zeros([BLOCK_N], tl.float32)
    sig_sum = tl.zeros([BLOCK_N], tl.float32)
    v = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for seg in tl.static_range(NUM_SEGMENTS):
        first = tl.load(pos_first_ptr + seg * N + rows, mask=valid, other=0)
        count = tl.load(pos_count_ptr + seg * N + rows, mask=valid, other=0)
        for e in range(0, tl.max(count)):  # the row's items, in item order
            take = valid & (e < count)
            idx = tl.load(item_base_ptr + first + e, mask=take, other=0) + off
            loss += tl.load(loss_ws_ptr + idx, mask=take, other=0.0)
            sig_sum += tl.load(sig_ws_ptr + idx, mask=take, other=0.0)
            if NEED_GRAD:
                v += tl.load(v_ws_ptr + idx[:, None] * D + offs_d[None, :],
                             mask=take[:, None] & d_mask[None, :], other=0.0)
    npos = tl.load(npos_ptr + rows, mask=row_mask, other=0.0)
    inv_npos = 1.0 / tl.maximum(npos, 1.0)
    dst = tl.load(perm_ptr + rows, mask=row_mask, other=0)  # scatter to the caller's order
    if pid_d == 0:
        if FAST:
            lse_nat = lse * 0.6931471805599453
        else:
            lse_nat = lse
        tl.store(row_loss_ptr + dst, loss * inv_npos, mask=row_mask)
        tl.store(lse_ptr + dst, tl.where(valid, lse_nat, float("-inf")), mask=row_mask)
        tl.store(pos_sig_ptr + dst, sig_sum, mask=row_mask)
        tl.store(num_pos_ptr + dst, npos, mask=row_mask)
    if NEED_GRAD:
        to_exp2 = _exp_units(FAST)
        u = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for s in range(0, num_slots):
            m_s = tl.load(m_ws_ptr + s * N + rows, mask=row_mask, other=float("-inf"))
            alpha = tl.exp2((m_s - m_safe) * to_exp2)
            u += tl.load(u_ws_ptr + (s * N + rows)[:, None] * D + offs_d[None, :],
                         mask=row_mask[:, None] & d_mask[None, :], other=0.0) * alpha[:, None]
        # gh = (τ⁻¹/|P|) [pos_sig · Σ_neg softmax·ĉ − Σ_p σ_p ĉ_p]. It is 0 without positives
        # (pos_sig = 0, v = 0), without negatives (u = 0, σ(-inf) = 0) and on ignored rows.
        # SupCon: pos_sig = |P|, softmax over every column, σ_p = 1 - |P|·softmax_p.
        softmax_u = u / tl.where(l > 0.0, l, 1.0)[:, None]
        gh = (sig_sum[:, None] * softmax_u - v) * (inv_temperature * inv_npos)[:, None]
        gh = tl.where(valid[:, None], gh, 0.0)
        tl.store(row_grad_ptr + dst[:, None] * D + offs_d[None, :], gh,
                 mask=row_mask[:, None] & d_mask[None, :])


@triton.jit
def _normalize_backprop(g, x, inv):
    """∂/∂x of ``x/max(‖x‖, eps)`` applied to the upstream ``g`` (fp32, per row), with
    ``inv = 1/max(‖x‖, eps)`` from the prep pass.

    ``(g - x̂ (x̂·g))·inv`` when ‖x‖ > eps, else ``g / eps`` (the clamp is then constant).
    """
    xh = x.to(tl.float32) * inv[:, None]
    proj = tl.sum(xh * g, axis=1)
    return tl.where((inv < 1e12)[:, None], (g - xh * proj[:, None]) * inv[:, None], g * 1e12)


@triton.jit
def _normalize_rows_kernel(x_ptr, stride_0, stride_1, inv_ptr, g_ptr, R, D,
                           BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """In place: g[r] <- the normalisation backprop of g[r] through row x[r] (caller order)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    offs_d = tl.arange(0, BLOCK_D)
    mask = row_mask[:, None] & (offs_d[None, :] < D)
    x = tl.load(x_ptr + rows[:, None] * stride_0 + offs_d[None, :] * stride_1, mask=mask,
                other=0.0)
    inv = tl.load(inv_ptr + rows, mask=row_mask, other=1.0)
    g_ptrs = g_ptr + rows[:, None] * D + offs_d[None, :]
    g = tl.load(g_ptrs, mask=mask, other=0.0)
    tl.store(g_ptrs, _normalize_backprop(g, x, inv), mask=mask)


# --------------------------------------------------------------------------------------
# Column backward kernel
# --------------------------------------------------------------------------------------

@triton.jit
def _columns_backward_kernel(
    a_ptr, stride_a_n, stride_a_d,
    perm_ptr, row_key_ptr, row_scale_ptr,    # the forward's row order and scales
    c_ptr, stride_c_m, stride_c_d, col_key_ptr, col_scale_ptr,
    lse_ptr, pos_sig_ptr, coef_ptr,          # [N] fp32, contiguous, caller's row order
    grad_ptr,                                # [M_seg, D] fp32; SPLIT: [groups, M_seg, D]
    N, M_seg, D, blocks_per_group,
    FAST: tl.constexpr, NORMALIZE: tl.constexpr, EXCLUDE_SELF: tl.constexpr,
    UPCAST: tl.constexpr, RESCALE: tl.constexpr, ROUND_BF16: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    SUPCON: tl.constexpr = False, SPLIT: tl.constexpr = False,
):
    # Grid (column tiles, row-block groups): program (t, g) sums over the row blocks
    # [g·blocks_per_group, (g + 1)·blocks_per_group). Column tiles are exactly the
    # negatives pass's (same permutation, same scale buffers, same BLOCK_M, same column
    # order; TF32 has 64-row blocks here against 128 there, and each warpgroup runs the same
    # m64nBLOCK_Mk8 wgmma chain over D on its 64 rows), so every logit is recomputed from
    # identical operands by the same _logits: bit-identical to the values lse was built
    # from. SPLIT (several groups): the fp32 partial of group g goes to its own slice,
    # _merge_columns_kernel sums them.
    pid = tl.program_id(0).to(tl.int64)
    group = tl.program_id(1)
    cols = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    col_mask = cols < M_seg
    offs_d = tl.arange(0, BLOCK_D)
    z = tl.load(col_key_ptr + cols, mask=col_mask, other=-1)
    col_scale = tl.load(col_scale_ptr + cols, mask=col_mask, other=0.0)
    c = _load_tile(c_ptr, cols, col_mask, stride_c_m, stride_c_d, offs_d, D, UPCAST)
    to_exp2 = _exp_units(FAST)
    if FAST:  # row_scale holds log2(e)·τ⁻¹/‖a‖; the gradient wants τ⁻¹/‖a‖
        grad_units = 0.6931471805599453
    else:
        grad_units = 1.0

    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    rb_begin = group * blocks_per_group
    for rb in range(rb_begin, tl.minimum(rb_begin + blocks_per_group, tl.cdiv(N, BLOCK_N))):
        rows = rb * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        src = tl.load(perm_ptr + rows, mask=row_mask, other=0)
        y = tl.load(row_key_ptr + rows, mask=row_mask, other=-3)
        coef = tl.load(coef_ptr + src, mask=row_mask, other=0.0)
        # Rows with coef = 0 (ignored, no positive, zero upstream gradient) add nothing.
        row_ok = row_mask & (y >= 0) & (coef != 0.0)
        if tl.sum(row_ok.to(tl.int32)) > 0:
            a = _load_tile(a_ptr, src, row_mask, stride_a_n, stride_a_d, offs_d, D, UPCAST)
            row_scale = tl.load(row_scale_ptr + rows, mask=row_mask, other=0.0)
            lse = tl.load(lse_ptr + src, mask=row_mask, other=0.0) * (1.0 / grad_units)
            pos_sig = tl.load(pos_sig_ptr + src, mask=row_mask, other=0.0)
            s = _logits(a, c, row_scale, col_scale, INPUT_PRECISION)
            pair = row_ok[:, None] & (z != -1)[None, :]
            if EXCLUDE_SELF:  # columns in the caller's order, rows through the permutation
                pair = pair & (src[:, None] != cols[None, :])
            # Negatives: coef·pos_sig·e^{s-lse} (<= 1 as lse >= s; the clamp guards the last
            # ulp). Positives: -coef·σ(lse - s) = -coef / (1 + e^{s-lse}); e = inf gives 0.
            # Unselected where() branches may hold inf or nan: they are dropped.
            e = tl.exp2((s - lse[:, None]) * to_exp2)
            g_neg = (coef * pos_sig)[:, None] * tl.minimum(e, 1.0)
            if SUPCON:  # every valid column the softmax term (pos_sig = |P|), positives -coef
                g_pos = g_neg - coef[:, None]
            else:
                g_pos = tl.fdiv(-coef[:, None] + tl.zeros_like(e), 1.0 + e)  # approximate
            g = tl.where(pair, tl.where(y[:, None] == z[None, :], g_pos, g_neg), 0.0)
            # dĉ_j = τ⁻¹ Σ_i G_ij â_i = Σ_i G_ij (τ⁻¹/‖a_i‖) a_i: Gᵀ·A on the tensor cores.
            w = g * (row_scale * grad_units)[:, None]
            if RESCALE:  # fp16: per-column scale, as in _scaled_dot (coefficients ~1e-7)
                scale = tl.max(tl.abs(w), axis=0)
                scale = tl.where(scale > 0.0, scale, 1.0)
                w_t = tl.trans(_weights_for_dot(w / scale[None, :], a, ROUND_BF16))
                acc += tl.dot(w_t, a, input_precision=INPUT_PRECISION) * scale[:, None]
            else:
                w_t = tl.trans(_weights_for_dot(w, a, ROUND_BF16))
                acc = tl.dot(w_t, a, acc, input_precision=INPUT_PRECISION)

    if SPLIT:
        out = grad_ptr + (group.to(tl.int64) * M_seg + cols)[:, None] * D + offs_d[None, :]
    else:
        if NORMALIZE:
            acc = _normalize_backprop(acc, c, col_scale)
        out = grad_ptr + cols[:, None] * D + offs_d[None, :]
    tl.store(out, acc, mask=col_mask[:, None] & (offs_d[None, :] < D))


@triton.jit
def _merge_columns_kernel(ws_ptr, num_groups, x_ptr, stride_0, stride_1, inv_ptr, grad_ptr,
                          R, D, NORMALIZE: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_D: tl.constexpr):
    """grad[r] <- Σ_g ws[g, r] (g in order: deterministic), then the normalisation backprop
    through row x[r] (caller order; inv = 1/‖x_r‖ from the prep)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    offs_d = tl.arange(0, BLOCK_D)
    mask = row_mask[:, None] & (offs_d[None, :] < D)
    g = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for k in range(0, num_groups):
        g += tl.load(ws_ptr + (k * R + rows)[:, None] * D + offs_d[None, :], mask=mask,
                     other=0.0)
    if NORMALIZE:
        x = tl.load(x_ptr + rows[:, None] * stride_0 + offs_d[None, :] * stride_1, mask=mask,
                    other=0.0)
        g = _normalize_backprop(g, x, tl.load(inv_ptr + rows, mask=row_mask, other=1.0))
    tl.store(grad_ptr + rows[:, None] * D + offs_d[None, :], g, mask=mask)


# --------------------------------------------------------------------------------------
# Launch configuration (the one place block sizes, warps and splits are chosen)
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Config:
    block_n: int      # anchor rows per tile of the negatives
    block_m: int      # columns per tile (negatives and column backward)
    block_d: int      # padded D, kept whole on chip
    num_warps: int
    num_stages: int
    pos_block_n: int  # rows per positives item (one class's rows: ~N/K, often under 64)
    pos_block_m: int  # columns per positives tile (and the plan's tiles)
    pos_warps: int
    pos_per_sm: int   # resident positives programs per SM
    col_block_n: int  # anchor rows per tile of the column backward
    col_warps: int
    prep_n: int       # rows per program of the prep pass (a read of each segment)
    fin_n: int        # rows per program of the small kernels (lse, finalise, merges)
    fin_d: int        # D chunk per program of the finalise


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _on_gpu(device: torch.device) -> bool:
    return device.type == "cuda" and not _interpreting()


def _config(d: int, device: torch.device, elem_size: int, n: int,
            allow_tf32: bool = False) -> _Config:
    block_d = max(16, triton.next_power_of_2(d))
    if not _on_gpu(device):
        # Interpreter (CPU): numpy runs every op; small tiles keep the tests quick and
        # still give several row blocks, column tiles, items and D chunks on test inputs.
        return _Config(16, 16, block_d, 4, 1, 16, 16, 4, 1, 16, 4, 16, 16, 16)
    return _gpu_config(block_d, elem_size, n, allow_tf32)


def _gpu_config(block_d: int, elem_size: int, n: int, allow_tf32: bool = False) -> _Config:
    """Tiles, warps and pipeline depth on a GPU (elem_size: the widest input dtype's bytes;
    n: the anchor rows; allow_tf32: fp32 dots in TF32 rather than 3xTF32).

    128 anchor rows with 8 warps: each warpgroup owns 64 rows of S, P and U (with 64 rows
    both warpgroups computed the same S). fp32 operands need twice the shared memory per
    tile and a transposed copy of the column tile for the U dot. TF32 keeps 128 rows with
    32-column tiles (A 128 KB + the two copies of a column tile 64 KB: 192 KB; the copies
    are shared by both warpgroups, which halves the transposition per row); 3xTF32 splits
    both operands into hi/lo copies (Triton's "tf32x3": A twice over, 128 KB at 64 rows),
    so it stays at 64 rows and one warpgroup. D = 512 keeps 32 rows (U alone is 64 KB of
    registers at 64 rows).
    """
    tf32 = elem_size >= 4 and allow_tf32 and block_d <= 256  # TF32 on the wgmma path
    if block_d > 256:
        block_n, block_m, warps = 32, 64, 8
    elif tf32:
        block_n, block_m, warps = 128, 32, 8
    elif elem_size >= 4:
        block_n, block_m, warps = 64, 32, 4
    else:
        block_n, block_m, warps = 128, 64, 8
    # Shared memory: the anchor tile plus `stages` column tiles in flight (twice over for
    # fp32: the TF32 U dot reads a transposed copy) must stay under the 227 KB of an
    # H100/H200 SM; the compiled sizes are in docs/notes/infonce-triton.md. TF32 loads the
    # column tile through registers (both copies are stored from there): its second stage
    # prefetches into registers and adds no shared memory.
    stages = 2 if tf32 else 3
    budget = 192 * 1024 if elem_size >= 4 else 160 * 1024
    copies = 2 if elem_size >= 4 else 1

    def smem(bm: int, st: int) -> int:
        return elem_size * block_d * (block_n + copies * (1 if tf32 else st) * bm)

    while smem(block_m, stages) > budget and stages > 2:
        stages -= 1
    while smem(block_m, stages) > budget and block_m > 32:
        block_m //= 2
    while smem(block_m, stages) > budget and stages > 1:
        stages -= 1
    # Positives: a class has ~N/K rows (54 at paper size, 6 at N = 120), so 64-row items
    # with one warpgroup (the same m64nNk16 instructions as each warpgroup of the
    # negatives) and two programs per SM (~97 KB smem, 128 threads); with few anchors
    # 16-row items (mma.sync), half the instructions a tile (760 against 1463). TF32:
    # 16-column tiles (96 KB, two programs per SM; 729 instructions a tile against 1282
    # with 32 columns at one program per SM); with few anchors 16 rows × 32 columns
    # (mma.sync, 80 KB, 756 instructions a tile).
    # Column backward: 128 rows of fp32 do not fit (A and its transposed copy for Gᵀ·A,
    # 294 KB), so TF32 keeps 64 rows and one warpgroup there. Its logits stay bit-identical
    # to the negatives': each warpgroup issues the same m64n32k8 wgmma chain over D on its
    # own 64 rows (same BLOCK_M, same D order); only the number of warpgroups differs.
    if block_n == 128 and not tf32:
        pos, col = (16 if n <= 256 else 64, block_m, 4, 2), (block_n, warps)
    elif block_n == 128:
        pos, col = (16, 32, 4, 2) if n <= 256 else (64, 16, 4, 2), (64, 4)
    else:
        pos, col = (block_n, block_m, warps, 1), (block_n, warps)
    return _Config(block_n, block_m, block_d, warps, stages, *pos, *col, 64, 16,
                   min(block_d, 64))


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _programs(device: torch.device) -> int:
    """Resident programs of the big kernels: one per SM on a GPU (1 CTA/SM at ~230
    registers a thread), 2 under the interpreter (enough to exercise every merge)."""
    if not _on_gpu(device):
        return 2
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _launch_options(num_warps: int, num_stages: int = 1) -> dict:
    """Compiler options of every launch (the AOT check in tests/ compiles with these).

    ``enable_fp_fusion=False``: with Triton's default, LLVM contracts ``dot·scale - lse``
    into one FMA wherever the logits have a single use (the positives and column-backward
    kernels) but rounds ``s = dot·scale`` first where they have several (the negatives
    kernel). The column backward's ``e^{s - lse}`` then differs from the forward's by up to
    half an ulp of ``s``, which for unnormalised inputs (``|s|`` ~ 1e5) is a factor e^{±0.02}
    on the dominant negative: the contrast gradient was off by 113 % on an H200. The dot
    products themselves are tensor-core MMAs and do not change.
    """
    return dict(num_warps=num_warps, num_stages=num_stages, enable_fp_fusion=False)


@dataclasses.dataclass(frozen=True)
class _Segment:
    """One column segment (one launch per kernel): the rows of ``c`` with int32 ``keys``
    and inverse norms ``scale`` (prep), split into contiguous ranges of whole tiles."""
    c: Tensor
    keys: Tensor
    scale: Tensor
    num: int
    is_self: bool
    tiles: int = 0
    splits: int = 0
    tiles_per_split: int = 0
    slot_offset: int = 0


def _plan_splits(segments: list[_Segment], n: int, d: int, need_grad: bool,
                 row_blocks: int, block_m: int, device: torch.device,
                 num_splits: int | None) -> tuple[list[_Segment], int]:
    """Split each column segment into contiguous ranges of whole tiles.

    ``num_splits`` is the target total over the segments (each non-empty segment gets at
    least one split, in proportion to its tiles, and every split gets at least one tile).
    Default: row blocks × splits ≈ the resident programs (one wave), capped so the fp32
    workspace stays under 32 MB.
    """
    tiles = [triton.cdiv(s.num, block_m) for s in segments]
    total = sum(tiles)
    if num_splits is None:
        target = max(1, _programs(device) // row_blocks)
        bytes_per_slot = 4 * n * (2 + (d if need_grad else 0))
        target = max(1, min(target, _WORKSPACE_BYTES // max(bytes_per_slot, 1)))
    else:
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        target = num_splits
    planned, offset = [], 0
    for seg, t in zip(segments, tiles):
        want = min(t, max(1, round(target * t / total)))
        per = triton.cdiv(t, want)
        splits = triton.cdiv(t, per)  # no empty split
        planned.append(dataclasses.replace(seg, tiles=t, splits=splits, tiles_per_split=per,
                                           slot_offset=offset))
        offset += splits
    return planned, offset


def _plan_row_groups(tiles: int, num_cols: int, n: int, d: int, block_n: int,
                     device: torch.device, row_groups: int | None) -> tuple[int, int]:
    """``(groups, row blocks per group)`` of a column backward launch over ``tiles``
    column tiles: each tile's sum over the anchor row blocks is split into contiguous
    groups, one program each, so that tiles × groups ≈ the resident programs (one group
    when the tiles already fill the machine: a bank). Several groups write fp32 partials
    ``[groups, num_cols, D]``, capped at the negatives' 32 MB; ``row_groups`` (>= 1) is the
    target instead. No group is empty."""
    blocks = triton.cdiv(n, block_n)
    if row_groups is None:
        want = max(1, _programs(device) // tiles)
        want = min(want, max(1, _WORKSPACE_BYTES // (4 * num_cols * d)))
    else:
        if row_groups < 1:
            raise ValueError(f"row_groups must be >= 1, got {row_groups}")
        want = row_groups
    per = triton.cdiv(blocks, min(want, blocks))
    return triton.cdiv(blocks, per), per


def _check_inputs(anchors: Tensor, labels: Tensor, contrast: Tensor,
                  contrast_labels: Tensor) -> None:
    if anchors.dim() != 2 or contrast.dim() != 2 or contrast.shape[1] != anchors.shape[1]:
        raise ValueError(f"anchors [N, D] and contrast [M, D] expected, got "
                         f"{tuple(anchors.shape)} and {tuple(contrast.shape)}")
    if labels.shape != (anchors.shape[0],) or contrast_labels.shape != (contrast.shape[0],):
        raise ValueError(f"labels [N] and contrast_labels [M] expected, got "
                         f"{tuple(labels.shape)} and {tuple(contrast_labels.shape)}")
    for name, x in (("anchors", anchors), ("contrast", contrast)):
        if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise TypeError(f"{name}: float32, bfloat16 or float16 expected, got {x.dtype}")
    if anchors.shape[1] > _MAX_DIM:
        raise ValueError(f"embedding dim {anchors.shape[1]} > {_MAX_DIM} is not supported "
                         "by the Triton kernels")
    if anchors.device.type == "cpu" and not _interpreting():
        raise RuntimeError("Triton kernels on CPU tensors need TRITON_INTERPRET=1")


def _dot_flags(anchors: Tensor, contrast: Tensor, allow_tf32: bool) -> dict:
    """Constexpr flags for the dtype of the tensor-core products of one launch.

    fp32 operands: ``"tf32"`` when TF32 is allowed, else ``"tf32x3"`` (three TF32 products
    of a hi/lo split, fp32-accurate up to the tensor cores' truncating accumulation; see
    the README's "fp32 modes"). Never ``"ieee"``: Triton lowers it to CUDA-core FMA loops
    that spilled 7.5 KB per thread at D=256 and ran 15x slower than dense PyTorch on an H200.
    """
    mixed = anchors.dtype != contrast.dtype
    dot_dtype = torch.float32 if mixed else anchors.dtype
    # The Triton interpreter's tl.dot is wrong for bf16 operands (see _weights_for_dot):
    # there the tiles are upcast and the weights rounded through bf16 instead.
    interp_bf16 = _interpreting() and torch.bfloat16 in (anchors.dtype, contrast.dtype)
    # input_precision only matters for fp32 operands; 16-bit dots keep Triton's default
    # ("tf32"), the path every bf16/fp16 Triton kernel takes.
    strict = dot_dtype == torch.float32 and not allow_tf32
    return dict(UPCAST=mixed or interp_bf16, RESCALE=dot_dtype == torch.float16,
                ROUND_BF16=interp_bf16 and dot_dtype == torch.bfloat16,
                INPUT_PRECISION="tf32x3" if strict else "tf32")


# --------------------------------------------------------------------------------------
# Prep (shared by the forward and the column backward: recomputed bit-identically)
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Prep:
    perm: Tensor          # [N] int64: sorted row r is anchor perm[r]
    sorted_labels: Tensor  # [N] int64
    row_key: Tensor       # [N] int32, sorted order (-3 for ignored rows)
    row_scale: Tensor     # [N] fp32, sorted order: inv_norm·τ⁻¹ (·log2(e) when fast)
    class_end: Tensor     # [N] int64, sorted order: end of the row's class
    inv_norm: Tensor      # [N] fp32, caller's order
    self_key: Tensor      # [N] int32, caller's order: each anchor's key as a column
    fast: bool
    shift: float          # the fast path's fixed shift log2(e)/τ (0 otherwise)


def _is_fast(normalize: bool, inv_temperature: float) -> bool:
    return normalize and inv_temperature <= 1.0 / _FAST_MIN_TEMPERATURE


def _prep_launch(x: Tensor, labels: Tensor, sorted_labels: Tensor, perm: Tensor,
                 ignore_index: int, normalize: bool, cfg: _Config, name: str | None,
                 anchors: bool = False, scale: float = 0.0) -> list[Tensor]:
    """``_prep_kernel`` over the rows of ``x``: ``[inv_norm, key]`` and, for the anchors,
    ``[row_key, row_scale, class_end]`` (sorted order). With ``name`` (the argument's) the
    same read checks that ``x`` is finite (sync-free: a device-side assert on CUDA)."""
    r, d = x.shape
    n = sorted_labels.shape[0]
    dev = x.device
    inv = torch.empty(r, dtype=torch.float32, device=dev)
    key = torch.empty(r, dtype=torch.int32, device=dev)
    programs = triton.cdiv(r, cfg.prep_n)
    bad = torch.empty(programs if name else 0, dtype=torch.float32, device=dev)
    rows = [torch.empty(n if anchors else 0, dtype=t, device=dev)
            for t in (torch.int32, torch.float32, torch.int64)]
    _prep_kernel[(programs,)](
        x, x.stride(0), x.stride(1), labels, labels.stride(0), sorted_labels, perm,
        inv, key, bad, *rows, r, n, d, ignore_index, scale, n.bit_length(),
        NORMALIZE=normalize, CHECK=name is not None, ANCHORS=anchors, BLOCK_R=cfg.prep_n,
        BLOCK_D=min(cfg.block_d, 128), **_launch_options(4))
    if name:
        assert_finite(bad, f"pixcontrast: {name} contains NaN or Inf")
    return [inv, key, *rows] if anchors else [inv, key]


def _prepare(anchors: Tensor, labels: Tensor, inv_temperature: float, ignore_index: int,
             normalize: bool, cfg: _Config, check_finite: bool = False) -> _Prep:
    # Stable sort on the device (deterministic); only [N] vectors, never an [N, D] copy.
    sorted_labels, perm = torch.sort(labels, stable=True)
    fast = _is_fast(normalize, inv_temperature)
    scale = inv_temperature * _LOG2E if fast else inv_temperature
    inv_norm, self_key, row_key, row_scale, class_end = _prep_launch(
        anchors, labels, sorted_labels, perm, ignore_index, normalize, cfg,
        "anchors" if check_finite else None, anchors=True, scale=scale)
    return _Prep(perm, sorted_labels, row_key, row_scale, class_end, inv_norm, self_key,
                 fast, inv_temperature * _LOG2E if fast else 0.0)


def _segments(prep: _Prep, anchors: Tensor, labels: Tensor, contrast: Tensor,
              contrast_labels: Tensor, self_contrast: bool, ignore_index: int,
              normalize: bool, cfg: _Config, check_finite: bool = False) -> list[_Segment]:
    """The column segments, self first (their keys and inverse norms)."""
    n, m = anchors.shape[0], contrast.shape[0]
    segments = []
    if self_contrast and n > 0:
        segments.append(_Segment(anchors, prep.self_key, prep.inv_norm, n, True))
    if m > 0 and n > 0:
        inv, key = _prep_launch(contrast, contrast_labels, prep.sorted_labels, prep.perm,
                                ignore_index, normalize, cfg,
                                "contrast" if check_finite else None)
        segments.append(_Segment(contrast, key, inv, m, False))
    return segments


@dataclasses.dataclass(frozen=True)
class _PositivesPlan:
    """The positives' work list (device tensors; counts never reach the host)."""
    col_idx: list[Tensor]      # per segment: key-sorted position -> column
    col_begin: Tensor          # [S, N] per sorted row: its class's range in the sorted keys
    col_end: Tensor
    block_end: Tensor          # [N] per sorted row: end of the class row block it starts
    item_owner: Tensor         # per item: segment·N + the class row block's first row
    item_chunk: Tensor         # per item: which chunk of that block's column tiles
    item_base: Tensor          # per item: first workspace row of its partials
    bounds: Tensor             # [S + 1]: segment s owns items [bounds[s], bounds[s + 1])
    tiles_per_item: Tensor     # [1]
    pos_first: Tensor          # [S, N]: per sorted row, its block's first item
    pos_count: Tensor          # [S, N]: and item count
    pos_off: Tensor            # [N]: the row's offset in its block
    num_pos: Tensor            # [N] fp32, sorted order
    workspace_rows: int


def _plan_positives(prep: _Prep, segments: list[_Segment], cfg: _Config,
                    device: torch.device, target: int) -> _PositivesPlan:
    """Work items over the key-sorted columns: (up to BLOCK_N rows of one class, a chunk
    of ``tiles_per_item`` column tiles of that class), at most ``max(target, blocks)``
    items in all (blocks: the (class row block, segment) pairs with a positive).

    Each segment's keys are sorted (a class-sorted bank's stay in place), then one
    ``_plan_kernel`` program builds the list. Bounds (host-known, so nothing syncs):
    items <= target + S·N, partial rows <= BLOCK_N·target + S·N (an item's rows are its
    block's, at most BLOCK_N).
    """
    n = prep.row_key.shape[0]
    s_count = len(segments)
    i64 = dict(dtype=torch.int64, device=device)
    sorted_keys = [torch.sort(seg.keys, stable=True) for seg in segments]
    skeys = [k for k, _ in sorted_keys]
    skeys.append(skeys[-1])  # with one segment, the second pointer is never read
    col_begin, col_end = torch.empty((2, s_count, n), **i64).unbind(0)
    block_end, pos_off = torch.empty((2, n), **i64).unbind(0)
    pos_first, pos_count = torch.empty((2, s_count, n), **i64).unbind(0)
    num_items = target + s_count * n
    item_owner, item_chunk, item_base = torch.empty((3, num_items), **i64).unbind(0)
    bounds = torch.empty(s_count + 1, **i64)
    tiles_per_item = torch.empty(1, **i64)
    num_pos = torch.empty(n, dtype=torch.float32, device=device)
    _plan_kernel[(1,)](
        prep.row_key, prep.class_end,
        skeys[0], skeys[0].shape[0], skeys[0].shape[0].bit_length(),
        skeys[1], skeys[1].shape[0], skeys[1].shape[0].bit_length(),
        col_begin, col_end, block_end, num_pos, pos_first, pos_count, pos_off,
        item_owner, item_chunk, item_base, bounds, tiles_per_item, n, target,
        NUM_SEGMENTS=s_count, SELF_FIRST=segments[0].is_self, BLOCK_N=cfg.pos_block_n,
        BLOCK_M=cfg.pos_block_m, BLOCK=256 if _on_gpu(device) else 16, **_launch_options(4))
    return _PositivesPlan([idx for _, idx in sorted_keys], col_begin, col_end, block_end,
                          item_owner, item_chunk, item_base, bounds, tiles_per_item,
                          pos_first, pos_count, pos_off, num_pos,
                          cfg.pos_block_n * target + s_count * n)


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------

def infonce_forward(
    anchors: Tensor, labels: Tensor, contrast: Tensor, contrast_labels: Tensor,
    self_contrast: bool, inv_temperature: float, ignore_index: int, normalize: bool,
    need_grad: bool, *, allow_tf32: bool = False, num_splits: int | None = None,
    num_items: int | None = None, check_finite: bool = False, supcon: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Row pass: ``(row_loss [N], lse [N], pos_sig [N], num_pos [N], row_grad [N, D] or [0, D])``.

    All outputs float32. ``num_splits`` and ``num_items`` (testing/tuning) override the
    number of column splits of the negatives (``_plan_splits``) and the target number of
    positives work items (``_plan_positives``; default: one per resident program, 3 under
    the interpreter). ``allow_tf32`` lets fp32 dots use TF32 tensor cores. ``check_finite``
    reports NaN/Inf in the anchors or the contrast rows ("pixcontrast: anchors contains NaN
    or Inf"), checked in the prep's read of each (sync-free). ``supcon``: SupCon's L_out on
    the same passes (the sums over every valid column but the row's own, positive terms
    ``lse - s`` with weight 1, so ``pos_sig = num_pos``; docs/design.md §1.5).
    """
    _check_inputs(anchors, labels, contrast, contrast_labels)
    if num_items is not None and num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    n, d = anchors.shape
    m = contrast.shape[0]
    dev = anchors.device
    f32 = dict(dtype=torch.float32, device=dev)
    if n == 0 or (m == 0 and not self_contrast):  # nothing to contrast against
        if check_finite:
            assert_finite(anchors, "pixcontrast: anchors contains NaN or Inf")
            assert_finite(contrast, "pixcontrast: contrast contains NaN or Inf")
        return (torch.zeros(n, **f32), torch.full((n,), float("-inf"), **f32),
                torch.zeros(n, **f32), torch.zeros(n, **f32),
                torch.zeros((n if need_grad else 0, d), **f32))

    cfg = _config(d, dev, max(anchors.element_size(), contrast.element_size()), n,
                  allow_tf32)
    prep = _prepare(anchors, labels, inv_temperature, ignore_index, normalize, cfg,
                    check_finite)
    segments = _segments(prep, anchors, labels, contrast, contrast_labels, self_contrast,
                         ignore_index, normalize, cfg, check_finite)
    row_blocks = triton.cdiv(n, cfg.block_n)
    segments, slots = _plan_splits(segments, n, d, need_grad, row_blocks, cfg.block_m, dev,
                                   num_splits)
    pos_programs = _programs(dev) * cfg.pos_per_sm
    plan = _plan_positives(prep, segments, cfg, dev, num_items or (
        pos_programs if _on_gpu(dev) else 3))

    ws_m, ws_l = torch.empty((2, slots, n), **f32).unbind(0)
    ws_lse = torch.empty(n, **f32)  # merged, logit units, sorted order
    ws_loss, ws_sig = torch.empty((2, plan.workspace_rows), **f32).unbind(0)
    ws_u = torch.empty((slots, n, d) if need_grad else (0,), **f32)
    ws_v = torch.empty((plan.workspace_rows, d) if need_grad else (0,), **f32)
    flags = [_dot_flags(anchors, seg.c, allow_tf32) for seg in segments]
    # SupCon on the fast path whose U and V weights are rounded for the tensor cores (16-bit
    # or TF32 dots): each positive's whole row-gradient weight goes into V, rounded once.
    # Otherwise U keeps the positives, which measured more accurate there: with fp32-exact
    # weights (3xTF32) U/l takes each p and l from the same logits, and on the general path
    # a row's max column has p = 1 exactly (docs/notes/infonce-triton.md).
    in_v = [supcon and prep.fast and f["INPUT_PRECISION"] == "tf32" for f in flags]
    for seg, seg_flags, seg_in_v in zip(segments, flags, in_v):
        # Columns in the segment's own order (the self pair is never a negative, so no
        # permutation is needed here); the column backward walks these same tiles.
        _negatives_kernel[(row_blocks, seg.splits)](
            anchors, anchors.stride(0), anchors.stride(1), prep.perm, prep.row_key,
            prep.row_scale, seg.c, seg.c.stride(0), seg.c.stride(1), seg.keys, seg.scale,
            ws_m, ws_l, ws_u, n, seg.num, d, seg.tiles_per_split, seg.slot_offset, prep.shift,
            FAST=prep.fast, NEED_GRAD=need_grad, **seg_flags,
            BLOCK_N=cfg.block_n, BLOCK_M=cfg.block_m, BLOCK_D=cfg.block_d,
            SUPCON=supcon, EXCLUDE_SELF=supcon and seg.is_self, POSITIVES_IN_V=seg_in_v,
            **_launch_options(cfg.num_warps, cfg.num_stages))
    ws_ml = torch.empty((2, n) if any(in_v) else (0,), **f32)  # merged (m, l), sorted order
    _lse_kernel[(triton.cdiv(n, cfg.fin_n),)](
        ws_m, ws_l, ws_lse, ws_ml, n, slots, FAST=prep.fast, STORE_ML=any(in_v),
        BLOCK=cfg.fin_n, **_launch_options(4))
    for i, seg in enumerate(segments):
        _positives_kernel[(pos_programs,)](
            anchors, anchors.stride(0), anchors.stride(1), prep.perm, prep.row_scale, ws_lse,
            seg.c, seg.c.stride(0), seg.c.stride(1), plan.col_idx[i], seg.scale,
            plan.item_owner, plan.item_chunk, plan.item_base, plan.bounds, plan.tiles_per_item,
            plan.block_end, plan.col_begin.select(0, i), plan.col_end.select(0, i),
            plan.num_pos, ws_ml, ws_loss, ws_sig, ws_v, n, d, i,
            FAST=prep.fast, NEED_GRAD=need_grad, EXCLUDE_SELF=seg.is_self,
            GPU_MATH=not _interpreting(), **flags[i],
            BLOCK_N=cfg.pos_block_n, BLOCK_M=cfg.pos_block_m, BLOCK_D=cfg.block_d, SUPCON=supcon,
            POSITIVES_IN_V=in_v[i], **_launch_options(cfg.pos_warps, cfg.num_stages))

    row_loss = torch.empty(n, **f32)
    lse = torch.empty(n, **f32)
    pos_sig = torch.empty(n, **f32)
    num_pos = torch.empty(n, **f32)
    row_grad = torch.empty((n if need_grad else 0, d), **f32)
    d_chunks = triton.cdiv(d, cfg.fin_d) if need_grad else 1
    _finalize_kernel[(triton.cdiv(n, cfg.fin_n), d_chunks)](
        prep.perm, prep.row_key, plan.num_pos, ws_m, ws_l, ws_u, slots,
        plan.pos_first, plan.pos_count, plan.pos_off, plan.item_base, ws_loss, ws_sig, ws_v,
        row_loss, lse, pos_sig, num_pos, row_grad, n, d, inv_temperature,
        FAST=prep.fast, NEED_GRAD=need_grad, NUM_SEGMENTS=len(segments),
        BLOCK_N=cfg.fin_n, BLOCK_D=cfg.fin_d, **_launch_options(4))
    if need_grad and normalize:
        _normalize_rows_kernel[(triton.cdiv(n, cfg.fin_n),)](
            anchors, anchors.stride(0), anchors.stride(1), prep.inv_norm, row_grad, n, d,
            BLOCK_R=cfg.fin_n, BLOCK_D=cfg.block_d, **_launch_options(4))
    return row_loss, lse, pos_sig, num_pos, row_grad


def infonce_backward_columns(
    anchors: Tensor, labels: Tensor, contrast: Tensor, contrast_labels: Tensor,
    self_contrast: bool, inv_temperature: float, ignore_index: int, normalize: bool,
    lse: Tensor, pos_sig: Tensor, row_coef: Tensor, *, allow_tf32: bool = False,
    supcon: bool = False, row_groups: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Column pass: ``(grad_contrast [M, D], grad_anchor_columns [N, D] or [0, D])``, float32.

    ``lse``/``pos_sig`` come from ``infonce_forward``; ``row_coef [N]`` is
    ``(dL/d row_loss) / |P(i)|`` (0 for rows without positives). ``row_groups``
    (testing/tuning) overrides the number of row-block groups each column tile is split
    over (``_plan_row_groups``).
    """
    _check_inputs(anchors, labels, contrast, contrast_labels)
    n, d = anchors.shape
    m = contrast.shape[0]
    dev = anchors.device
    f32 = dict(dtype=torch.float32, device=dev)
    if n == 0:  # no rows: every column gradient is 0
        return torch.zeros((m, d), **f32), torch.zeros((0, d), **f32)
    grad_contrast = torch.empty((m, d), **f32)  # every launch writes its whole segment
    grad_self = torch.empty((n if self_contrast else 0, d), **f32)
    # [N] vectors: contiguous fp32 copies are O(N) and usually no-ops.
    lse = lse.to(torch.float32).contiguous()
    pos_sig = pos_sig.to(torch.float32).contiguous()
    row_coef = row_coef.to(torch.float32).contiguous()
    cfg = _config(d, dev, max(anchors.element_size(), contrast.element_size()), n,
                  allow_tf32)
    # The forward's prep, recomputed (deterministic, so the scales are bit-identical).
    prep = _prepare(anchors, labels, inv_temperature, ignore_index, normalize, cfg)
    segments = _segments(prep, anchors, labels, contrast, contrast_labels, self_contrast,
                         ignore_index, normalize, cfg)
    for seg in segments:
        grad = grad_self if seg.is_self else grad_contrast
        tiles = triton.cdiv(seg.num, cfg.block_m)
        groups, per_group = _plan_row_groups(tiles, seg.num, n, d, cfg.col_block_n, dev,
                                             row_groups)
        # Several groups: fp32 partials [groups, columns, D], then the merge into grad.
        out = torch.empty((groups, seg.num, d), **f32) if groups > 1 else grad
        _columns_backward_kernel[(tiles, groups)](
            anchors, anchors.stride(0), anchors.stride(1), prep.perm, prep.row_key,
            prep.row_scale, seg.c, seg.c.stride(0), seg.c.stride(1), seg.keys, seg.scale,
            lse, pos_sig, row_coef, out, n, seg.num, d, per_group,
            FAST=prep.fast, NORMALIZE=normalize, EXCLUDE_SELF=seg.is_self,
            **_dot_flags(anchors, seg.c, allow_tf32), BLOCK_N=cfg.col_block_n,
            BLOCK_M=cfg.block_m, BLOCK_D=cfg.block_d, SUPCON=supcon, SPLIT=groups > 1,
            **_launch_options(cfg.col_warps, cfg.num_stages))
        if groups > 1:
            _merge_columns_kernel[(triton.cdiv(seg.num, cfg.fin_n),)](
                out, groups, seg.c, seg.c.stride(0), seg.c.stride(1), seg.scale, grad,
                seg.num, d, NORMALIZE=normalize, BLOCK_R=cfg.fin_n, BLOCK_D=cfg.block_d,
                **_launch_options(4))
    return grad_contrast, grad_self
