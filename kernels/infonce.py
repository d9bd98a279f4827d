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

``infonce_backward_columns(..., lse, pos_sig, row_coef)`` -> ``(grad_contrast [M, D],
grad_anchor_columns [N, D] or [0, D])`` float32: the gradient of ``Σ_i row_coef_i·|P(i)|·
row_loss_i`` with respect to the columns (the contrast rows, and the anchors seen as columns
when ``self_contrast``).

How the work is laid out (logits and lse in natural units; exponentials as ``exp2`` of
``(s - m)·log2(e)``):

* Columns are one or two *segments*: the anchors themselves (``self_contrast``; the pair
  ``j == i`` excluded) and the ``M`` contrast rows. Each segment is its own launch with its
  own base pointer, strides and dtype, so the contrast tensor is never copied or
  concatenated; the launches write disjoint split slots of one workspace.
* ``_negatives_kernel``, grid ``(row blocks, splits)``: flash-decoding over the negatives.
  Each program keeps its ``BLOCK_N`` anchor rows (full padded ``D``) on chip and walks its
  split's column tiles with an online max ``m``, ``l = Σ e^(s-m)`` and, when a gradient is
  wanted, ``U = Σ e^(s-m) ĉ`` (the softmax-weighted sum over the negatives, same rescale as
  ``l``). The partials go to a ``[splits, N(, D)]`` fp32 workspace; the merge is a fixed
  order sum in the finalise kernel (deterministic, no float atomics). Splitting the
  columns is what fills a GPU when ``N`` is small and ``M`` large.
* ``_positives_kernel``, same grid: merges ``(m, l)`` into the final lse in its prologue,
  then visits only the (row block, column tile) pairs that hold a positive pair. The
  launcher sorts the anchor rows by label (on the device) and loads them through that
  permutation, so a row block spans few classes; self-segment columns use the same
  permutation, and the memory bank is stored class-sorted. The pass then costs about
  ``1/K`` of a full one for ``K`` classes.
* ``_finalize_kernel``, one program per row block: merges the split partials, writes the
  per-row outputs and the row gradient (through the anchor normalisation) in the caller's
  row order (a scatter through the permutation: deterministic).
* ``_columns_backward_kernel``, one program per column tile: recomputes the logits against
  every anchor row block, ``acc += Gᵀ·Â``, then the column normalisation backprop. It walks
  the same row blocks and column tiles as the negatives pass, so the recomputed logits are
  bit-identical to those the lse was built from (this matters for unnormalised inputs,
  whose logits reach 1e5 and more: one ulp of difference is then a visible factor in
  e^{s - lse}).

No host synchronisation anywhere (no ``.item()``, ``.nonzero()``, data-dependent Python
control flow); empty inputs return without launching.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["infonce_forward", "infonce_backward_columns"]

_MAX_DIM = 512  # BLOCK_D is the padded full D kept on chip; past 512 it no longer fits.
_WORKSPACE_BYTES = 32 * 1024 * 1024  # cap of the split workspace (forward partials)


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
def _row_norm(x):
    xf = x.to(tl.float32)
    return tl.sqrt(tl.sum(xf * xf, axis=1))


@triton.jit
def _inv_norm(x, NORMALIZE: tl.constexpr, BLOCK: tl.constexpr):
    """1 / max(‖x_r‖, 1e-12) per row (F.normalize's clamp), or 1 without normalisation."""
    if NORMALIZE:
        inv = 1.0 / tl.maximum(_row_norm(x), 1e-12)
    else:
        inv = tl.full([BLOCK], 1.0, tl.float32)
    return inv


@triton.jit
def _normalize_backprop(g, x, NORMALIZE: tl.constexpr):
    """∂/∂x of ``x/max(‖x‖, eps)`` applied to the upstream ``g`` (fp32, per row).

    ``(g - x̂ (x̂·g)) / ‖x‖`` when ‖x‖ > eps, else ``g / eps`` (the clamp is then constant).
    """
    if NORMALIZE:
        norm = _row_norm(x)
        inv = 1.0 / tl.maximum(norm, 1e-12)
        xh = x.to(tl.float32) * inv[:, None]
        proj = tl.sum(xh * g, axis=1)
        g = tl.where((norm > 1e-12)[:, None], (g - xh * proj[:, None]) * inv[:, None],
                     g * 1e12)
    return g


@triton.jit
def _softplus_sigmoid(x):
    """softplus(x) and σ(x), stable for any x including -inf (both 0 there).

    softplus = max(x, 0) + log1p(e^-|x|). There is no portable log1p in tl (the approximate
    log near 1 loses all relative accuracy), so log1p(e) for e in [0, 1] is computed as
    2·atanh(z), z = e / (2 + e) <= 1/3: an odd series whose 8 terms reach fp32 precision.
    """
    e = tl.exp(-tl.abs(x))
    z = e / (2.0 + e)
    w = z * z
    poly = 1.0 / 15.0
    poly = poly * w + 1.0 / 13.0
    poly = poly * w + 1.0 / 11.0
    poly = poly * w + 1.0 / 9.0
    poly = poly * w + 1.0 / 7.0
    poly = poly * w + 1.0 / 5.0
    poly = poly * w + 1.0 / 3.0
    poly = poly * w + 1.0
    softplus = tl.maximum(x, 0.0) + 2.0 * z * poly
    sigmoid = 1.0 / (1.0 + tl.exp(-x))
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
def _logits(a, c, row_scale, inv_nc, INPUT_PRECISION: tl.constexpr):
    """s = inv_temperature · â ĉᵀ for a [BLOCK_N, BLOCK_D] row tile and [BLOCK_M, BLOCK_D] column
    tile (row_scale = inv_temperature/‖a‖): the norms are applied to the fp32 product, so no
    normalised copy of either tile is made.

    The negatives pass and the column backward must get bit-identical logits (same helper,
    same tile shapes and orientation): with unnormalised inputs the logits reach ~1e5-1e9,
    where one ulp is >= 1/128, and the backward's e^{s - lse} is only right if s_max - lse is
    computed from the same s as lse was. That also needs every launch compiled without FMA
    contraction (``_launch_options``), so that ``s`` is rounded the same way in every kernel.
    """
    s = tl.dot(a, tl.trans(c), input_precision=INPUT_PRECISION)
    return s * row_scale[:, None] * inv_nc[None, :]


# --------------------------------------------------------------------------------------
# Forward kernels
# --------------------------------------------------------------------------------------

@triton.jit
def _anchor_block(a_ptr, stride_a_n, stride_a_d, perm_ptr, row_labels_ptr, N, D, offs_d,
                  inv_temperature, ignore_index, NORMALIZE: tl.constexpr,
                  UPCAST: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's block of label-sorted anchor rows, kept on chip for the whole pass.

    Returns the sorted positions, their mask, labels and validity, the original row indices
    (``perm``), the anchor tile and the per-row logit scale ``inv_norm·inv_temperature``.
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    y = tl.load(row_labels_ptr + rows, mask=row_mask, other=ignore_index)
    row_ok = row_mask & (y != ignore_index)
    src = tl.load(perm_ptr + rows, mask=row_mask, other=0)
    a = _load_tile(a_ptr, src, row_mask, stride_a_n, stride_a_d, offs_d, D, UPCAST)
    row_scale = _inv_norm(a, NORMALIZE, BLOCK_N) * inv_temperature
    return rows, row_mask, y, row_ok, src, a, row_scale


@triton.jit
def _negatives_kernel(
    a_ptr, stride_a_n, stride_a_d,
    perm_ptr, row_labels_ptr,                 # row r of the sorted order: anchor perm[r]
    c_ptr, stride_c_m, stride_c_d,
    col_labels_ptr, stride_col_labels,       # columns in the segment's own order
    m_ws_ptr, l_ws_ptr, u_ws_ptr,             # [slots, N], [slots, N], [slots, N, D] fp32
    N, M_seg, D, tiles_per_split, slot_offset, inv_temperature, ignore_index,
    NORMALIZE: tl.constexpr, NEED_GRAD: tl.constexpr,
    UPCAST: tl.constexpr, RESCALE: tl.constexpr, ROUND_BF16: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_s = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    rows, row_mask, y, row_ok, src, a, row_scale = _anchor_block(
        a_ptr, stride_a_n, stride_a_d, perm_ptr, row_labels_ptr, N, D, offs_d,
        inv_temperature, ignore_index, NORMALIZE, UPCAST, BLOCK_N)

    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_N], tl.float32)
    u = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    t_begin = pid_s * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, tl.cdiv(M_seg, BLOCK_M))
    for t in range(t_begin, t_end):
        cols = t * BLOCK_M + tl.arange(0, BLOCK_M)
        col_mask = cols < M_seg
        z = tl.load(col_labels_ptr + cols * stride_col_labels, mask=col_mask, other=ignore_index)
        c = _load_tile(c_ptr, cols, col_mask, stride_c_m, stride_c_d, offs_d, D, UPCAST)
        inv_nc = _inv_norm(c, NORMALIZE, BLOCK_M)
        s = _logits(a, c, row_scale, inv_nc, INPUT_PRECISION)
        # The self pair (same anchor) has equal labels, so it is never a negative: no
        # diagonal test is needed here.
        neg = row_ok[:, None] & (z != ignore_index)[None, :] & (y[:, None] != z[None, :])
        s = tl.where(neg, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        # While a row has seen no negative its max is -inf; shift by 0 then, so that
        # -inf - (-inf) never appears (alpha = 2^-inf = 0 and p = 0 are both right).
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        # Natural-log units (the stored lse is m + log l, exactly m when one negative
        # dominates); (s - m)·log2(e) rather than s·log2(e) - m·log2(e), which would lose
        # the difference when |s| is large.
        alpha = tl.exp2((m - m_safe) * 1.4426950408889634)
        p = tl.exp2((s - m_safe[:, None]) * 1.4426950408889634)
        l = l * alpha + tl.sum(p, axis=1)
        if NEED_GRAD:
            u = _scaled_dot(p * inv_nc[None, :], c, u * alpha[:, None], RESCALE, ROUND_BF16,
                            INPUT_PRECISION)
        m = m_new

    slot = slot_offset + pid_s
    tl.store(m_ws_ptr + slot * N + rows, m, mask=row_mask)
    tl.store(l_ws_ptr + slot * N + rows, l, mask=row_mask)
    if NEED_GRAD:
        u_ptrs = u_ws_ptr + (slot * N + rows)[:, None] * D + offs_d[None, :]
        tl.store(u_ptrs, u, mask=row_mask[:, None] & (offs_d[None, :] < D))


@triton.jit
def _merged_lse(m_ws_ptr, l_ws_ptr, rows, row_mask, N, num_slots, BLOCK_N: tl.constexpr):
    """Merge the split partials: (m, l, lse) with lse = m + log l (-inf: no negative).

    The same expression in the positives and the finalise kernels: one lse for both.
    """
    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    for s in range(0, num_slots):
        m = tl.maximum(m, tl.load(m_ws_ptr + s * N + rows, mask=row_mask, other=float("-inf")))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    l = tl.zeros([BLOCK_N], tl.float32)
    for s in range(0, num_slots):  # fixed order: the merge is deterministic
        m_s = tl.load(m_ws_ptr + s * N + rows, mask=row_mask, other=float("-inf"))
        l_s = tl.load(l_ws_ptr + s * N + rows, mask=row_mask, other=0.0)
        l += l_s * tl.exp2((m_s - m_safe) * 1.4426950408889634)
    lse = tl.where(l > 0.0, m_safe + tl.log2(l) * 0.6931471805599453, float("-inf"))
    return m_safe, l, lse


@triton.jit
def _positives_kernel(
    a_ptr, stride_a_n, stride_a_d,
    perm_ptr, row_labels_ptr,
    c_ptr, stride_c_m, stride_c_d,
    col_labels_ptr, stride_col_labels,
    col_perm_ptr,                             # column j is row col_perm[j] of c (if any)
    m_ws_ptr, l_ws_ptr,                       # [slots, N] (from _negatives_kernel)
    loss_ws_ptr, sig_ws_ptr, npos_ws_ptr,     # [slots, N]
    v_ws_ptr,                                 # [slots, N, D]
    N, M_seg, D, num_slots, tiles_per_split, slot_offset, inv_temperature, ignore_index,
    NORMALIZE: tl.constexpr, NEED_GRAD: tl.constexpr, HAS_COL_PERM: tl.constexpr,
    EXCLUDE_SELF: tl.constexpr, UPCAST: tl.constexpr, RESCALE: tl.constexpr,
    ROUND_BF16: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_s = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    rows, row_mask, y, row_ok, src, a, row_scale = _anchor_block(
        a_ptr, stride_a_n, stride_a_d, perm_ptr, row_labels_ptr, N, D, offs_d,
        inv_temperature, ignore_index, NORMALIZE, UPCAST, BLOCK_N)
    _, _, lse = _merged_lse(m_ws_ptr, l_ws_ptr, rows, row_mask, N, num_slots, BLOCK_N)

    loss = tl.zeros([BLOCK_N], tl.float32)
    sig_sum = tl.zeros([BLOCK_N], tl.float32)
    npos = tl.zeros([BLOCK_N], tl.float32)
    v = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    t_begin = pid_s * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, tl.cdiv(M_seg, BLOCK_M))
    for t in range(t_begin, t_end):
        cols = t * BLOCK_M + tl.arange(0, BLOCK_M)
        col_mask = cols < M_seg
        z = tl.load(col_labels_ptr + cols * stride_col_labels, mask=col_mask, other=ignore_index)
        pos = row_ok[:, None] & (z != ignore_index)[None, :] & (y[:, None] == z[None, :])
        if EXCLUDE_SELF:  # same permutation on both sides: position r == j is the self pair
            pos = pos & (rows[:, None] != cols[None, :])
        # Skip tiles without a positive pair before touching the column data: with rows
        # sorted by label and a class-sorted bank, most tiles are skipped.
        if tl.sum(pos.to(tl.int32)) > 0:
            if HAS_COL_PERM:
                csrc = tl.load(col_perm_ptr + cols, mask=col_mask, other=0)
            else:
                csrc = cols
            c = _load_tile(c_ptr, csrc, col_mask, stride_c_m, stride_c_d, offs_d, D, UPCAST)
            inv_nc = _inv_norm(c, NORMALIZE, BLOCK_M)
            s = _logits(a, c, row_scale, inv_nc, INPUT_PRECISION)
            # lse = -inf (no negative) gives x = -inf: softplus = σ = 0.
            softplus, sigmoid = _softplus_sigmoid(lse[:, None] - s)
            sigmoid = tl.where(pos, sigmoid, 0.0)
            loss += tl.sum(tl.where(pos, softplus, 0.0), axis=1)
            sig_sum += tl.sum(sigmoid, axis=1)
            npos += tl.sum(pos.to(tl.float32), axis=1)
            if NEED_GRAD:
                v = _scaled_dot(sigmoid * inv_nc[None, :], c, v, RESCALE, ROUND_BF16,
                                INPUT_PRECISION)

    slot = slot_offset + pid_s
    tl.store(loss_ws_ptr + slot * N + rows, loss, mask=row_mask)
    tl.store(sig_ws_ptr + slot * N + rows, sig_sum, mask=row_mask)
    tl.store(npos_ws_ptr + slot * N + rows, npos, mask=row_mask)
    if NEED_GRAD:
        v_ptrs = v_ws_ptr + (slot * N + rows)[:, None] * D + offs_d[None, :]
        tl.store(v_ptrs, v, mask=row_mask[:, None] & (offs_d[None, :] < D))


@triton.jit
def _finalize_kernel(
    a_ptr, stride_a_n, stride_a_d, perm_ptr,
    m_ws_ptr, l_ws_ptr, u_ws_ptr, loss_ws_ptr, sig_ws_ptr, npos_ws_ptr, v_ws_ptr,
    row_loss_ptr, lse_ptr, pos_sig_ptr, num_pos_ptr, row_grad_ptr,   # outputs, caller's order
    N, D, num_slots, inv_temperature,
    NORMALIZE: tl.constexpr, NEED_GRAD: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0).to(tl.int64)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    offs_d = tl.arange(0, BLOCK_D)
    vec_mask = row_mask[:, None] & (offs_d[None, :] < D)

    m_safe, l, lse = _merged_lse(m_ws_ptr, l_ws_ptr, rows, row_mask, N, num_slots, BLOCK_N)
    loss = tl.zeros([BLOCK_N], tl.float32)
    sig_sum = tl.zeros([BLOCK_N], tl.float32)
    npos = tl.zeros([BLOCK_N], tl.float32)
    for s in range(0, num_slots):  # fixed order: the merge is deterministic
        loss += tl.load(loss_ws_ptr + s * N + rows, mask=row_mask, other=0.0)
        sig_sum += tl.load(sig_ws_ptr + s * N + rows, mask=row_mask, other=0.0)
        npos += tl.load(npos_ws_ptr + s * N + rows, mask=row_mask, other=0.0)
    inv_npos = 1.0 / tl.maximum(npos, 1.0)

    dst = tl.load(perm_ptr + rows, mask=row_mask, other=0)  # scatter to the caller's order
    tl.store(row_loss_ptr + dst, loss * inv_npos, mask=row_mask)
    tl.store(lse_ptr + dst, lse, mask=row_mask)
    tl.store(pos_sig_ptr + dst, sig_sum, mask=row_mask)
    tl.store(num_pos_ptr + dst, npos, mask=row_mask)
    if NEED_GRAD:
        u = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        v = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for s in range(0, num_slots):
            m_s = tl.load(m_ws_ptr + s * N + rows, mask=row_mask, other=float("-inf"))
            alpha = tl.exp2((m_s - m_safe) * 1.4426950408889634)
            offs = (s * N + rows)[:, None] * D + offs_d[None, :]
            u += tl.load(u_ws_ptr + offs, mask=vec_mask, other=0.0) * alpha[:, None]
            v += tl.load(v_ws_ptr + offs, mask=vec_mask, other=0.0)
        # gh = (τ⁻¹/|P|) [pos_sig · Σ_neg softmax·ĉ − Σ_p σ_p ĉ_p]. It is 0 without positives
        # (pos_sig = 0, v = 0) and without negatives (u = 0, σ(-inf) = 0, pos_sig = 0).
        softmax_u = u / tl.where(l > 0.0, l, 1.0)[:, None]
        gh = (sig_sum[:, None] * softmax_u - v) * (inv_temperature * inv_npos)[:, None]
        a = _load_tile(a_ptr, dst, row_mask, stride_a_n, stride_a_d, offs_d, D, False)
        g = _normalize_backprop(gh, a, NORMALIZE)
        tl.store(row_grad_ptr + dst[:, None] * D + offs_d[None, :], g, mask=vec_mask)


# --------------------------------------------------------------------------------------
# Column backward kernel
# --------------------------------------------------------------------------------------

@triton.jit
def _columns_backward_kernel(
    a_ptr, stride_a_n, stride_a_d,
    perm_ptr, row_labels_ptr,                 # the forward's row order (sorted by label)
    c_ptr, stride_c_m, stride_c_d, col_labels_ptr, stride_col_labels,
    lse_ptr, pos_sig_ptr, coef_ptr,           # [N] fp32, contiguous, caller's row order
    grad_ptr,                                 # [M_seg, D] fp32, contiguous
    N, M_seg, D, inv_temperature, ignore_index,
    NORMALIZE: tl.constexpr, EXCLUDE_SELF: tl.constexpr, UPCAST: tl.constexpr,
    RESCALE: tl.constexpr, ROUND_BF16: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Row blocks and column tiles are exactly the negatives pass's (same permutation, same
    # block sizes, same column order), so every logits tile is recomputed from identical
    # operand tiles by the same _logits: bit-identical to the values lse was built from.
    pid = tl.program_id(0).to(tl.int64)
    cols = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    col_mask = cols < M_seg
    offs_d = tl.arange(0, BLOCK_D)
    z = tl.load(col_labels_ptr + cols * stride_col_labels, mask=col_mask, other=ignore_index)
    col_ok = col_mask & (z != ignore_index)
    c = _load_tile(c_ptr, cols, col_mask, stride_c_m, stride_c_d, offs_d, D, UPCAST)
    inv_nc = _inv_norm(c, NORMALIZE, BLOCK_M)

    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for rb in range(0, tl.cdiv(N, BLOCK_N)):
        rows = rb * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        src = tl.load(perm_ptr + rows, mask=row_mask, other=0)
        y = tl.load(row_labels_ptr + rows, mask=row_mask, other=ignore_index)
        coef = tl.load(coef_ptr + src, mask=row_mask, other=0.0)
        # Rows with coef = 0 (ignored, no positive, zero upstream gradient) add nothing.
        row_ok = row_mask & (y != ignore_index) & (coef != 0.0)
        if tl.sum(row_ok.to(tl.int32)) > 0:
            a = _load_tile(a_ptr, src, row_mask, stride_a_n, stride_a_d, offs_d, D, UPCAST)
            row_scale = _inv_norm(a, NORMALIZE, BLOCK_N) * inv_temperature
            lse = tl.load(lse_ptr + src, mask=row_mask, other=0.0)
            pos_sig = tl.load(pos_sig_ptr + src, mask=row_mask, other=0.0)
            s = _logits(a, c, row_scale, inv_nc, INPUT_PRECISION)
            pair = row_ok[:, None] & col_ok[None, :]
            if EXCLUDE_SELF:  # columns in the caller's order, rows through the permutation
                pair = pair & (src[:, None] != cols[None, :])
            same = y[:, None] == z[None, :]
            # Negatives: coef·pos_sig·e^{s-lse} (<= 1 as lse >= s; the clamp guards the last
            # ulp). Positives: -coef·σ(lse - s) = -coef / (1 + e^{s-lse}); e = inf gives 0.
            # Unselected where() branches may hold inf or nan: they are dropped.
            e = tl.exp2((s - lse[:, None]) * 1.4426950408889634)
            g_neg = (coef * pos_sig)[:, None] * tl.minimum(e, 1.0)
            g_pos = -coef[:, None] / (1.0 + e)
            g = tl.where(pair & same, g_pos, tl.where(pair, g_neg, 0.0))
            # dĉ_j = τ⁻¹ Σ_i G_ij â_i = Σ_i G_ij row_scale_i a_i: Gᵀ·A on the tensor cores.
            w = g * row_scale[:, None]
            if RESCALE:  # fp16: per-column scale, as in _scaled_dot (coefficients ~1e-7)
                scale = tl.max(tl.abs(w), axis=0)
                scale = tl.where(scale > 0.0, scale, 1.0)
                w_t = tl.trans(_weights_for_dot(w / scale[None, :], a, ROUND_BF16))
                acc += tl.dot(w_t, a, input_precision=INPUT_PRECISION) * scale[:, None]
            else:
                w_t = tl.trans(_weights_for_dot(w, a, ROUND_BF16))
                acc = tl.dot(w_t, a, acc, input_precision=INPUT_PRECISION)

    grad = _normalize_backprop(acc, c, NORMALIZE)
    tl.store(grad_ptr + cols[:, None] * D + offs_d[None, :], grad,
             mask=col_mask[:, None] & (offs_d[None, :] < D))


# --------------------------------------------------------------------------------------
# Launch configuration (the one place block sizes, warps and splits are chosen)
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Config:
    block_n: int      # anchor rows per program (forward) / per inner step (backward)
    block_m: int      # columns per tile (forward) / per program (backward)
    block_d: int      # padded D, kept whole on chip
    num_warps: int
    num_stages: int


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _config(d: int, device: torch.device, elem_size: int) -> _Config:
    if device.type != "cuda" or _interpreting():
        # Interpreter (CPU): numpy runs every op; small tiles keep the tests quick and
        # still give several row blocks and column tiles on test-sized inputs.
        return _Config(16, 16, max(16, triton.next_power_of_2(d)), 4, 1)
    return _gpu_config(d, elem_size)


def _gpu_config(d: int, elem_size: int) -> _Config:
    """Tiles, warps and pipeline depth on a GPU (elem_size: the widest input dtype's bytes)."""
    block_d = max(16, triton.next_power_of_2(d))
    # GPU: one program holds the anchor tile [BLOCK_N, BLOCK_D] and the fp32 accumulator U
    # [BLOCK_N, BLOCK_D]; 64 x 64 tiles are what flash-attention-like kernels use for head
    # dims up to 128. Past 128 the accumulator needs 8 warps (64 x 256 fp32 = 64 registers
    # a thread at 256 threads), and at 512 the row block is halved to stay out of spills.
    if block_d <= 128:
        block_n, block_m, warps = 64, 64, 4
    elif block_d <= 256:
        block_n, block_m, warps = 64, 64, 8
    else:
        block_n, block_m, warps = 32, 64, 8
    # Shared memory: the anchor tile plus `stages` column tiles in flight must stay well
    # under the 228 KB of an H100/H200 SM (fp32 inputs at large D would not fit otherwise).
    stages = 3
    budget = 160 * 1024

    def smem(bm: int, st: int) -> int:
        return elem_size * block_d * (block_n + st * bm)

    while smem(block_m, stages) > budget and stages > 2:
        stages -= 1
    while smem(block_m, stages) > budget and block_m > 32:
        block_m //= 2
    while smem(block_m, stages) > budget and stages > 1:
        stages -= 1
    return _Config(block_n, block_m, block_d, warps, stages)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@dataclasses.dataclass(frozen=True)
class _Segment:
    """One column segment (one launch per kernel): the rows of ``c`` with ``labels``."""
    c: Tensor
    labels: Tensor
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
    Default on a GPU: about two programs per SM over the row blocks, capped so the fp32
    workspace stays under 32 MB; under the interpreter, 2 (enough to exercise the merge).
    """
    tiles = [triton.cdiv(s.num, block_m) for s in segments]
    total = sum(tiles)
    if num_splits is None:
        if device.type == "cuda":
            target = triton.cdiv(2 * _sm_count(device.index if device.index is not None
                                               else torch.cuda.current_device()), row_blocks)
        else:
            target = 2
        bytes_per_slot = 4 * n * (5 + (2 * d if need_grad else 0))
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


def _launch_options(cfg: _Config) -> dict:
    """Compiler options of every launch (the AOT check in tests/ compiles with these).

    ``enable_fp_fusion=False``: with Triton's default, LLVM contracts ``dot·scale - lse``
    into one FMA wherever the logits have a single use (the positives and column-backward
    kernels) but rounds ``s = dot·scale`` first where they have several (the negatives
    kernel). The column backward's ``e^{s - lse}`` then differs from the forward's by up to
    half an ulp of ``s``, which for unnormalised inputs (``|s|`` ~ 1e5) is a factor e^{±0.02}
    on the dominant negative: the contrast gradient was off by 113 % on an H200. The dot
    products themselves are tensor-core MMAs and do not change.
    """
    return dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages, enable_fp_fusion=False)


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------

def infonce_forward(
    anchors: Tensor, labels: Tensor, contrast: Tensor, contrast_labels: Tensor,
    self_contrast: bool, inv_temperature: float, ignore_index: int, normalize: bool,
    need_grad: bool, *, allow_tf32: bool = False, num_splits: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Row pass: ``(row_loss [N], lse [N], pos_sig [N], num_pos [N], row_grad [N, D] or [0, D])``.

    All outputs float32. ``num_splits`` (testing/tuning) overrides the number of column
    splits; see ``_plan_splits``. ``allow_tf32`` lets fp32 dots use TF32 tensor cores.
    """
    _check_inputs(anchors, labels, contrast, contrast_labels)
    n, d = anchors.shape
    m = contrast.shape[0]
    dev = anchors.device
    f32 = dict(dtype=torch.float32, device=dev)
    segments = []
    if self_contrast and n > 0:
        segments.append(_Segment(anchors, labels, n, True))
    if m > 0 and n > 0:
        segments.append(_Segment(contrast, contrast_labels, m, False))
    if not segments:  # no rows or no columns: nothing to contrast against
        return (torch.zeros(n, **f32), torch.full((n,), float("-inf"), **f32),
                torch.zeros(n, **f32), torch.zeros(n, **f32),
                torch.zeros((n if need_grad else 0, d), **f32))

    cfg = _config(d, dev, max(anchors.element_size(), contrast.element_size()))
    row_blocks = triton.cdiv(n, cfg.block_n)
    segments, slots = _plan_splits(segments, n, d, need_grad, row_blocks, cfg.block_m, dev,
                                   num_splits)
    # Rows sorted by label (on the device; stable, so deterministic): row r of every kernel
    # is anchor perm[r]. Only the [N] permutation is materialised, never an [N, D] copy.
    sorted_labels, perm = torch.sort(labels, stable=True)

    ws = torch.empty((5, slots, n), **f32)  # m, l, loss, sig, npos
    ws_m, ws_l, ws_loss, ws_sig, ws_npos = ws.unbind(0)
    if need_grad:
        ws_vec = torch.empty((2, slots, n, d), **f32)
        ws_u, ws_v = ws_vec.unbind(0)
    else:
        ws_u = ws_v = ws  # never dereferenced (NEED_GRAD=False)
    launch = _launch_options(cfg)
    common = dict(NORMALIZE=normalize, NEED_GRAD=need_grad, BLOCK_N=cfg.block_n,
                  BLOCK_M=cfg.block_m, BLOCK_D=cfg.block_d)
    for seg in segments:
        flags = _dot_flags(anchors, seg.c, allow_tf32)
        # Columns in the segment's own order (the self pair is never a negative, so no
        # permutation is needed here); the column backward walks these same tiles.
        _negatives_kernel[(row_blocks, seg.splits)](
            anchors, anchors.stride(0), anchors.stride(1), perm, sorted_labels,
            seg.c, seg.c.stride(0), seg.c.stride(1), seg.labels, seg.labels.stride(0),
            ws_m, ws_l, ws_u,
            n, seg.num, d, seg.tiles_per_split, seg.slot_offset, inv_temperature, ignore_index,
            **flags, **common, **launch)
    for seg in segments:
        flags = _dot_flags(anchors, seg.c, allow_tf32)
        # Self columns go through the rows' permutation so that same-class columns are
        # contiguous too; the bank is used in its stored (class-sorted) order.
        col_labels = sorted_labels if seg.is_self else seg.labels
        _positives_kernel[(row_blocks, seg.splits)](
            anchors, anchors.stride(0), anchors.stride(1), perm, sorted_labels,
            seg.c, seg.c.stride(0), seg.c.stride(1), col_labels, col_labels.stride(0),
            perm, ws_m, ws_l, ws_loss, ws_sig, ws_npos, ws_v,
            n, seg.num, d, slots, seg.tiles_per_split, seg.slot_offset, inv_temperature,
            ignore_index, HAS_COL_PERM=seg.is_self, EXCLUDE_SELF=seg.is_self, **flags,
            **common, **launch)

    row_loss = torch.empty(n, **f32)
    lse = torch.empty(n, **f32)
    pos_sig = torch.empty(n, **f32)
    num_pos = torch.empty(n, **f32)
    row_grad = torch.empty((n if need_grad else 0, d), **f32)
    _finalize_kernel[(row_blocks,)](
        anchors, anchors.stride(0), anchors.stride(1), perm,
        ws_m, ws_l, ws_u, ws_loss, ws_sig, ws_npos, ws_v,
        row_loss, lse, pos_sig, num_pos, row_grad,
        n, d, slots, inv_temperature,
        NORMALIZE=normalize, NEED_GRAD=need_grad, BLOCK_N=cfg.block_n, BLOCK_D=cfg.block_d,
        **_launch_options(cfg))
    return row_loss, lse, pos_sig, num_pos, row_grad


def infonce_backward_columns(
    anchors: Tensor, labels: Tensor, contrast: Tensor, contrast_labels: Tensor,
    self_contrast: bool, inv_temperature: float, ignore_index: int, normalize: bool,
    lse: Tensor, pos_sig: Tensor, row_coef: Tensor, *, allow_tf32: bool = False,
) -> tuple[Tensor, Tensor]:
    """Column pass: ``(grad_contrast [M, D], grad_anchor_columns [N, D] or [0, D])``, float32.

    ``lse``/``pos_sig`` come from ``infonce_forward``; ``row_coef [N]`` is
    ``(dL/d row_loss) / |P(i)|`` (0 for rows without positives).
    """
    _check_inputs(anchors, labels, contrast, contrast_labels)
    n, d = anchors.shape
    m = contrast.shape[0]
    dev = anchors.device
    f32 = dict(dtype=torch.float32, device=dev)
    # [N] vectors: contiguous fp32 copies are O(N) and usually no-ops.
    lse = lse.to(torch.float32).contiguous()
    pos_sig = pos_sig.to(torch.float32).contiguous()
    row_coef = row_coef.to(torch.float32).contiguous()
    cfg = _config(d, dev, max(anchors.element_size(), contrast.element_size()))
    # The forward's row order, recomputed (a stable sort is deterministic): see the kernel.
    sorted_labels, perm = torch.sort(labels, stable=True)

    outputs = []
    for c, c_labels, num, is_self in ((contrast, contrast_labels, m, False),
                                      (anchors, labels, n if self_contrast else 0, True)):
        grad = torch.empty((num, d), **f32) if n > 0 else torch.zeros((num, d), **f32)
        if num > 0 and n > 0:
            _columns_backward_kernel[(triton.cdiv(num, cfg.block_m),)](
                anchors, anchors.stride(0), anchors.stride(1), perm, sorted_labels,
                c, c.stride(0), c.stride(1), c_labels, c_labels.stride(0),
                lse, pos_sig, row_coef, grad,
                n, num, d, inv_temperature, ignore_index,
                NORMALIZE=normalize, EXCLUDE_SELF=is_self, **_dot_flags(anchors, c, allow_tf32),
                BLOCK_N=cfg.block_n, BLOCK_M=cfg.block_m, BLOCK_D=cfg.block_d,
                **_launch_options(cfg))
        outputs.append(grad)
    return outputs[0], outputs[1]
