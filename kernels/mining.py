"""Triton kernels of hard example mining (docs/design.md §2.8; driver pixcontrast/mining.py).

The same algorithm and contract as csrc/cpu/mining.cpp (``mining_select`` and
``mining_backward``), on CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``):

* ``_hist_kernel``: one radix-select pass. Each program holds ``BLOCK_N`` anchor rows and
  walks every column tile of a segment; for each valid (row, column) pair of a row whose pool
  needs a threshold, the 11-bit digit of the logit's monotone key (complemented for the
  negatives) is counted into that row's ``[2, 2048]`` histogram when the higher digits match
  the prefix found so far. Integer atomics: the counts are exact in any order.
* ``_take_kernel``: the columns in order; the pool membership of a tile by comparison with
  the threshold and, for keys equal to it, a running count (``tl.cumsum``) against the number
  still wanted; running pool ranks; hardest takes the first ``take``, semi-hard matches the
  pool ranks against a window of the row's drawn ranks. Per-row state lives in global memory
  between segments (the anchors' own columns, then the contrast rows).
* ``_floyd_kernel``: Floyd's draw per row and set, from the uniforms.
* ``_rows_kernel`` / ``_columns_kernel``: the gather-sums of the backward, the columns' one
  over the pairs grouped by column (a stable sort), each column summed in (row, slot) order.

SupCon without mining runs on the InfoNCE kernels (kernels/infonce.py, ``supcon=True``).

Every logit is ``(a·cᵀ)·(1/‖a‖)(1/‖c‖)/τ`` from fp32 tiles by one helper, the same tile
shapes in every pass, compiled without FMA contraction, so the passes see identical logits.
fp32 products use 3xTF32 on the tensor cores (16-bit inputs are upcast to fp32 tiles: the
interpreter's bf16 ``tl.dot`` is wrong, and one code path keeps the passes identical).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

BINS = 2048     # 11-bit digits
DIGIT = 11


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _blocks(d: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_M, BLOCK_D, num_warps)."""
    block_d = max(16, triton.next_power_of_2(d))
    if device.type != "cuda" or _interpreting():
        return 16, 16, block_d, 4
    return 64, 16, block_d, 4


def _options(num_warps: int) -> dict:
    # No FMA contraction: every pass must round the logits the same way (see
    # kernels/infonce.py, _launch_options).
    return dict(num_warps=num_warps, num_stages=1, enable_fp_fusion=False)


@triton.jit
def _load_rows(ptr, s0, s1, rows, ok, D, NORMALIZE: tl.constexpr, BLOCK_D: tl.constexpr):
    """fp32 rows and their scale 1/max(‖x‖, ε) (1 without normalisation)."""
    d = tl.arange(0, BLOCK_D)
    x = tl.load(ptr + rows[:, None].to(tl.int64) * s0 + d[None, :] * s1,
                mask=ok[:, None] & (d[None, :] < D), other=0.0).to(tl.float32)
    if NORMALIZE:
        scale = 1.0 / tl.maximum(tl.sqrt(tl.sum(x * x, 1)), 1e-12)
    else:
        scale = tl.full([x.shape[0]], 1.0, tl.float32)
    return x, scale


@triton.jit
def _row_block(a_ptr, a_s0, a_s1, y_ptr, N, M, D, ignore, SPAN, NORMALIZE: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """A program's rows (axis 0) and its split of the columns [start, end) (axis 1): the rows'
    labels, which take part, and the rows with their scales."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    start = tl.program_id(1) * SPAN
    end = tl.minimum(start + SPAN, M)
    y = tl.load(y_ptr + rows, mask=rows < N, other=ignore)
    row_ok = (rows < N) & (y != ignore)
    a, a_scale = _load_rows(a_ptr, a_s0, a_s1, rows, row_ok, D, NORMALIZE, BLOCK_D)
    return rows, start, end, y, row_ok, a, a_scale


@triton.jit
def _tile(a, a_scale, rows, row_ok, y, c_ptr, c_s0, c_s1, z_ptr, cols, M, D, ignore, inv_t,
          IS_SELF: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK_D: tl.constexpr):
    """The row tile against columns ``cols``: logits ``s``, their monotone keys, the valid
    pairs (both labels not ignored, not the self pair) and the same-class pairs."""
    ok = cols < M
    z = tl.load(z_ptr + cols, mask=ok, other=ignore)
    c, c_scale = _load_rows(c_ptr, c_s0, c_s1, cols, ok, D, NORMALIZE, BLOCK_D)
    s = tl.dot(a, tl.trans(c), input_precision="tf32x3")
    s = s * (a_scale * inv_t)[:, None] * c_scale[None, :]
    valid = row_ok[:, None] & (ok & (z != ignore))[None, :]
    if IS_SELF:
        valid = valid & (rows[:, None] != cols[None, :])
    return s, _keys(s), valid, y[:, None] == z[None, :]


@triton.jit
def _keys(s):
    """Monotone 32-bit keys (in int64) of fp32 logits; −0 counts as +0."""
    s = s + 0.0
    u = s.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    return tl.where(u >= 2147483648, 4294967295 - u, u + 2147483648)


@triton.jit
def _hist_kernel(a_ptr, a_s0, a_s1, y_ptr, c_ptr, c_s0, c_s1, z_ptr, state_ptr, hist_ptr,
                 N, M, D, ignore, inv_t, HI, LO, SPAN,
                 IS_SELF: tl.constexpr, FIRST: tl.constexpr, NORMALIZE: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, start, end, y, row_ok, a, a_scale = _row_block(
        a_ptr, a_s0, a_s1, y_ptr, N, M, D, ignore, SPAN, NORMALIZE, BLOCK_N, BLOCK_D)
    st = state_ptr + rows.to(tl.int64) * 16          # [N, 2, 8]: set 0 at +0, set 1 at +8
    pre_n = tl.load(st + 0, mask=row_ok, other=0)
    pre_p = tl.load(st + 8, mask=row_ok, other=0)
    act_n = row_ok & (tl.load(st + 2, mask=row_ok, other=0) > 0) & (
        tl.load(st + 2, mask=row_ok, other=0) < tl.load(st + 3, mask=row_ok, other=0))
    act_p = row_ok & (tl.load(st + 10, mask=row_ok, other=0) > 0) & (
        tl.load(st + 10, mask=row_ok, other=0) < tl.load(st + 11, mask=row_ok, other=0))
    mask_digit = (1 << (HI - LO)) - 1
    for j0 in range(start, end, BLOCK_M):
        cols = j0 + tl.arange(0, BLOCK_M)
        _, key, valid, same = _tile(a, a_scale, rows, row_ok, y, c_ptr, c_s0, c_s1, z_ptr,
                                    cols, end, D, ignore, inv_t, IS_SELF, NORMALIZE, BLOCK_D)
        key = tl.where(same, key, 4294967295 - key)
        active = tl.where(same, act_p[:, None], act_n[:, None])
        if not FIRST:
            prefix = tl.where(same, pre_p[:, None], pre_n[:, None])
            active = active & ((key >> HI) == prefix)
        digit = (key >> LO) & mask_digit
        where = hist_ptr + (rows[:, None].to(tl.int64) * 2 + same.to(tl.int64)) * 2048 + digit
        tl.atomic_add(where, tl.full(digit.shape, 1, tl.int32), mask=valid & active)


@triton.jit
def _count_set(key, member, st, row_ok):
    """(in the pool for sure, equal to the threshold) member counts of one set in a tile."""
    prefix = tl.load(st + 0, mask=row_ok, other=0)
    pool = tl.load(st + 2, mask=row_ok, other=0)
    count = tl.load(st + 3, mask=row_ok, other=0)
    radix = (pool > 0) & (pool < count)
    sure = member & ((radix[:, None] == 0) | (key < prefix[:, None]))
    eq = member & radix[:, None] & (key == prefix[:, None])
    return tl.sum(sure.to(tl.int64), 1), tl.sum(eq.to(tl.int64), 1)


@triton.jit
def _count_kernel(a_ptr, a_s0, a_s1, y_ptr, c_ptr, c_s0, c_s1, z_ptr, state_ptr, out_ptr,
                  N, M, D, ignore, inv_t, SPAN,
                  IS_SELF: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per (split, row, set): members surely in the pool and members equal to the threshold,
    so that the take pass can start every split at its rank (out: [splits, N, 2, 2])."""
    rows, start, end, y, row_ok, a, a_scale = _row_block(
        a_ptr, a_s0, a_s1, y_ptr, N, M, D, ignore, SPAN, NORMALIZE, BLOCK_N, BLOCK_D)
    st = state_ptr + rows.to(tl.int64) * 16
    sure_n = tl.zeros([BLOCK_N], tl.int64)
    eq_n = tl.zeros([BLOCK_N], tl.int64)
    sure_p = tl.zeros([BLOCK_N], tl.int64)
    eq_p = tl.zeros([BLOCK_N], tl.int64)
    for j0 in range(start, end, BLOCK_M):
        cols = j0 + tl.arange(0, BLOCK_M)
        _, key, valid, same = _tile(a, a_scale, rows, row_ok, y, c_ptr, c_s0, c_s1, z_ptr,
                                    cols, end, D, ignore, inv_t, IS_SELF, NORMALIZE, BLOCK_D)
        a1, b1 = _count_set(4294967295 - key, valid & (same == 0), st, row_ok)
        a2, b2 = _count_set(key, valid & same, st + 8, row_ok)
        sure_n += a1
        eq_n += b1
        sure_p += a2
        eq_p += b2
    out = out_ptr + (tl.program_id(1) * N + rows.to(tl.int64)) * 4
    tl.store(out + 0, sure_n, mask=rows < N)
    tl.store(out + 1, eq_n, mask=rows < N)
    tl.store(out + 2, sure_p, mask=rows < N)
    tl.store(out + 3, eq_p, mask=rows < N)


@triton.jit
def _take_set(s, key, member, cols_global, rows, row_ok, st, ranks_ptr, out_idx_ptr,
              out_s_ptr, off, K_ALL, SEMI: tl.constexpr, BLOCK_M: tl.constexpr):
    """One set's take step over one tile; returns nothing, updates the state in memory."""
    prefix = tl.load(st + 0, mask=row_ok, other=0)
    rank = tl.load(st + 1, mask=row_ok, other=0)
    pool = tl.load(st + 2, mask=row_ok, other=0)
    count = tl.load(st + 3, mask=row_ok, other=0)
    take = tl.load(st + 4, mask=row_ok, other=0)
    eq_taken = tl.load(st + 5, mask=row_ok, other=0)
    seen = tl.load(st + 6, mask=row_ok, other=0)
    ptr = tl.load(st + 7, mask=row_ok, other=0)
    radix = (pool > 0) & (pool < count)
    eq = member & radix[:, None] & (key == prefix[:, None])
    eq_rank = eq_taken[:, None] + tl.cumsum(eq.to(tl.int64), 1) - 1
    eq_in = eq & (eq_rank <= rank[:, None])
    in_pool = member & ((radix[:, None] == 0) | (key < prefix[:, None]) | eq_in)
    pool_rank = seen[:, None] + tl.cumsum(in_pool.to(tl.int64), 1) - 1
    if SEMI:
        q = tl.arange(0, BLOCK_M)
        wmask = row_ok[:, None] & (ptr[:, None] + q[None, :] < take[:, None])
        win = tl.load(ranks_ptr + rows[:, None].to(tl.int64) * K_ALL + off + ptr[:, None]
                      + q[None, :], mask=wmask, other=-1)
        match = (pool_rank[:, :, None] == win[:, None, :]) & in_pool[:, :, None]
        hit = tl.sum(match.to(tl.int64), 2) > 0
        slot = ptr[:, None] + tl.sum(match.to(tl.int64) * q[None, None, :], 2)
    else:
        hit = in_pool & (pool_rank < take[:, None])
        slot = pool_rank
    dst = rows[:, None].to(tl.int64) * K_ALL + off + slot
    tl.store(out_idx_ptr + dst, cols_global[None, :].to(tl.int64) + tl.zeros_like(slot),
             mask=hit)
    tl.store(out_s_ptr + dst, s, mask=hit)
    tl.store(st + 5, eq_taken + tl.sum(eq_in.to(tl.int64), 1), mask=row_ok)
    tl.store(st + 6, seen + tl.sum(in_pool.to(tl.int64), 1), mask=row_ok)
    tl.store(st + 7, ptr + tl.sum(hit.to(tl.int64), 1), mask=row_ok)


@triton.jit
def _take_kernel(a_ptr, a_s0, a_s1, y_ptr, c_ptr, c_s0, c_s1, z_ptr, state_ptr, ranks_ptr,
                 out_idx_ptr, out_s_ptr, N, M, D, ignore, inv_t, col_offset, K_NEG, K_ALL,
                 SPAN, IS_SELF: tl.constexpr, SEMI: tl.constexpr, NORMALIZE: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, start, end, y, row_ok, a, a_scale = _row_block(
        a_ptr, a_s0, a_s1, y_ptr, N, M, D, ignore, SPAN, NORMALIZE, BLOCK_N, BLOCK_D)
    st = state_ptr + (tl.program_id(1) * N + rows.to(tl.int64)) * 16   # this split's state
    for j0 in range(start, end, BLOCK_M):
        cols = j0 + tl.arange(0, BLOCK_M)
        s, key, valid, same = _tile(a, a_scale, rows, row_ok, y, c_ptr, c_s0, c_s1, z_ptr,
                                    cols, end, D, ignore, inv_t, IS_SELF, NORMALIZE, BLOCK_D)
        _take_set(s, 4294967295 - key, valid & (same == 0), col_offset + cols, rows, row_ok, st,
                  ranks_ptr, out_idx_ptr, out_s_ptr, 0, K_ALL, SEMI, BLOCK_M)
        _take_set(s, key, valid & same, col_offset + cols, rows, row_ok, st + 8, ranks_ptr,
                  out_idx_ptr, out_s_ptr, K_NEG, K_ALL, SEMI, BLOCK_M)


@triton.jit
def _floyd_kernel(u_ptr, take_ptr, pool_ptr, out_ptr, K_ALL, K_SET, off,
                  BLOCK_K: tl.constexpr):
    """Floyd's uniform take-subset of [0, pool) for one row and set (unsorted, -1 pad)."""
    row = tl.program_id(0).to(tl.int64)
    take = tl.load(take_ptr + row)
    pool = tl.load(pool_ptr + row)
    k = tl.arange(0, BLOCK_K)
    chosen = tl.full([BLOCK_K], -1, tl.int64)
    for step in range(0, K_SET):
        j = pool - take + step
        u = tl.load(u_ptr + row * K_ALL + off + step)
        t = tl.minimum(tl.floor(u * (j + 1).to(tl.float64)).to(tl.int64), j)
        taken = tl.sum((chosen == t).to(tl.int32), 0) > 0
        pick = tl.where(taken, j, t)
        chosen = tl.where((k == step) & (step < take), pick, chosen)
    tl.store(out_ptr + row * K_ALL + off + k, chosen, mask=k < K_SET)


def _split(m: int, block_m: int, row_blocks: int, device: torch.device) -> tuple[int, int]:
    """(splits, columns per split) of one segment: about two programs per SM in all (two
    splits under the interpreter, enough to exercise the merge), each a whole number of
    tiles."""
    if device.type == "cuda" and not _interpreting():
        props = torch.cuda.get_device_properties(device)
        want = max(1, 2 * props.multi_processor_count // row_blocks)
    else:
        want = 2
    tiles = triton.cdiv(m, block_m)
    splits = max(1, min(want, tiles))
    span = triton.cdiv(tiles, splits) * block_m
    return triton.cdiv(m, span), span


def _segments(anchors, labels, contrast, contrast_labels, self_contrast):
    segs = []
    if self_contrast:
        segs.append((anchors, labels, 0, True))
    segs.append((contrast, contrast_labels, anchors.shape[0] if self_contrast else 0, False))
    return segs


def mining_select(anchors: Tensor, labels: Tensor, contrast: Tensor, contrast_labels: Tensor,
                  self_contrast: bool, inv_temperature: float, ignore_index: int,
                  normalize: bool, u: Tensor, semi_hard: bool, fraction: float,
                  num_negatives: int, num_positives: int) -> tuple[Tensor, Tensor]:
    """The C++ ``mining_select`` contract (csrc/cpu/mining.cpp), fp32 logits."""
    n, d = anchors.shape
    k_all = num_negatives + num_positives
    dev = anchors.device
    sel_idx = torch.full((n, k_all), -1, dtype=torch.int64, device=dev)
    sel_logit = torch.zeros((n, k_all), dtype=torch.float32, device=dev)
    if n == 0 or k_all == 0:
        return sel_idx, sel_logit
    labels, contrast_labels = labels.long().contiguous(), contrast_labels.long().contiguous()
    # Candidate counts from the labels alone (sort + searchsorted: no host sync).
    col_labels = torch.cat([labels, contrast_labels] if self_contrast else [contrast_labels])
    big = torch.iinfo(torch.int64).max
    valid_cols = col_labels != ignore_index
    ordered = torch.where(valid_cols, col_labels, big).sort().values
    same = (torch.searchsorted(ordered, labels, right=True)
            - torch.searchsorted(ordered, labels))
    row_ok = labels != ignore_index
    count = torch.stack([valid_cols.sum() - same, same - int(self_contrast)], 1)
    count = torch.where(row_ok[:, None], count, 0)
    def per_set(x, fn):
        return torch.stack([fn(x[:, 0], num_negatives), fn(x[:, 1], num_positives)], 1)

    if semi_hard:
        top = torch.ceil(count.to(torch.float64) * fraction).to(torch.int64)
        pool = torch.minimum(count, per_set(top, lambda t, k: t.clamp(min=k)))
    else:
        pool = per_set(count, lambda c, k: c.clamp(max=k))
    take = per_set(pool, lambda q, k: q.clamp(max=k))
    state = torch.zeros((n, 2, 8), dtype=torch.int64, device=dev)
    state[:, :, 1] = pool - 1
    state[:, :, 2], state[:, :, 3], state[:, :, 4] = pool, count, take
    ranks = sel_idx                                          # unused unless semi-hard
    if semi_hard:
        ranks = torch.full((n, k_all), -1, dtype=torch.int64, device=dev)
        u = u.to(torch.float64).contiguous()
        for s_i, (off, k) in enumerate(((0, num_negatives), (num_negatives, num_positives))):
            if k == 0:
                continue
            _floyd_kernel[(n,)](u, take[:, s_i].contiguous(), pool[:, s_i].contiguous(), ranks,
                                k_all, k, off, BLOCK_K=triton.next_power_of_2(k))
        ranks = torch.where(ranks < 0, big, ranks)
        ranks = torch.cat([ranks[:, :num_negatives].sort(1).values,
                           ranks[:, num_negatives:].sort(1).values], 1)
        ranks = torch.where(ranks == big, -1, ranks).contiguous()

    bn, bm, bd, warps = _blocks(d, dev)
    row_blocks = triton.cdiv(n, bn)
    segs = [(c, z, off, is_self, *_split(c.shape[0], bm, row_blocks, dev))
            for c, z, off, is_self in _segments(anchors, labels, contrast, contrast_labels,
                                                self_contrast) if c.shape[0] > 0]
    hist = torch.empty((n, 2, BINS), dtype=torch.int32, device=dev)
    active = (pool > 0) & (pool < count)
    for p in range(3):                                       # 32-bit keys: 11 + 11 + 10
        hi = 32 - DIGIT * p
        lo = max(hi - DIGIT, 0)
        hist.zero_()
        for c, z, _, is_self, splits, span in segs:
            _hist_kernel[(row_blocks, splits)](
                               anchors, anchors.stride(0), anchors.stride(1), labels, c,
                               c.stride(0), c.stride(1), z, state, hist, n, c.shape[0], d,
                               ignore_index, inv_temperature, hi, lo, span, IS_SELF=is_self,
                               FIRST=p == 0, NORMALIZE=normalize, BLOCK_N=bn, BLOCK_M=bm,
                               BLOCK_D=bd, **_options(warps))
        cum = hist.to(torch.int64).cumsum(-1)
        rank = state[:, :, 1]
        digit = torch.searchsorted(cum, rank[..., None].contiguous(), right=True)[..., 0]
        digit = digit.clamp(max=(1 << (hi - lo)) - 1)
        before = torch.where(digit > 0, cum.gather(-1, (digit - 1).clamp(min=0)[..., None])[..., 0],
                             0)
        state[:, :, 1] = torch.where(active, rank - before, rank)
        state[:, :, 0] = torch.where(active, (state[:, :, 0] << (hi - lo)) | digit,
                                     state[:, :, 0])
    # Each split of the take pass starts at its rank: counts per split, then exclusive
    # sums over the splits in column order (segments in order).
    counts = []
    for c, z, _, is_self, splits, span in segs:
        out = torch.empty((splits, n, 2, 2), dtype=torch.int64, device=dev)
        _count_kernel[(row_blocks, splits)](
            anchors, anchors.stride(0), anchors.stride(1), labels, c, c.stride(0), c.stride(1),
            z, state, out, n, c.shape[0], d, ignore_index, inv_temperature, span,
            IS_SELF=is_self, NORMALIZE=normalize, BLOCK_N=bn, BLOCK_M=bm, BLOCK_D=bd,
            **_options(warps))
        counts.append(out)
    if not counts:
        return sel_idx, sel_logit
    counts = torch.cat(counts)                               # [S, N, 2, (sure, eq)]
    sure, eq = counts[..., 0], counts[..., 1]
    eq_before = eq.cumsum(0) - eq
    rank = state[None, :, :, 1]
    eq_in = (rank + 1 - eq_before).clamp(min=0).minimum(eq)
    seen = (sure + eq_in).cumsum(0) - (sure + eq_in)
    if semi_hard:
        wanted = torch.where(ranks < 0, big, ranks)
        ptr = torch.stack([
            torch.searchsorted(wanted[:, :num_negatives].contiguous(),
                               seen[:, :, 0].T.contiguous()).T,
            torch.searchsorted(wanted[:, num_negatives:].contiguous(),
                               seen[:, :, 1].T.contiguous()).T], -1)
    else:
        ptr = torch.minimum(seen, state[None, :, :, 4])
    split_state = state[None].repeat(counts.shape[0], 1, 1, 1)
    split_state[..., 5], split_state[..., 6], split_state[..., 7] = eq_before, seen, ptr
    first = 0
    for c, z, offset, is_self, splits, span in segs:
        _take_kernel[(row_blocks, splits)](
            anchors, anchors.stride(0), anchors.stride(1), labels, c, c.stride(0), c.stride(1),
            z, split_state[first:first + splits], ranks, sel_idx, sel_logit, n, c.shape[0], d,
            ignore_index, inv_temperature, offset, num_negatives, k_all, span,
            IS_SELF=is_self, SEMI=semi_hard, NORMALIZE=normalize, BLOCK_N=bn, BLOCK_M=bm,
            BLOCK_D=bd, **_options(warps))
        first += splits
    return sel_idx, sel_logit


# --------------------------------------------------------------------------------------
# Backward: gather-sums over the selected pairs
# --------------------------------------------------------------------------------------

@triton.jit
def _normalize_backward(x, scale, g, NORMALIZE: tl.constexpr):
    """∂L/∂x from g = ∂L/∂x̂ for x̂ = x·scale, scale = 1/max(‖x‖, ε) (rows of [R, D])."""
    if NORMALIZE:
        xh = x * scale[:, None]
        c = tl.sum(xh * g, 1)
        clamped = scale >= 1e12
        g = tl.where(clamped[:, None], g * scale[:, None],
                     (g - xh * c[:, None]) * scale[:, None])
    return g


@triton.jit
def _rows_kernel(a_ptr, a_s0, a_s1, c_ptr, c_s0, c_s1, idx_ptr, w_ptr, out_ptr, N, M, D,
                 n_self, K_ALL, inv_t, NORMALIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    d = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for k in range(0, K_ALL):
        j = tl.load(idx_ptr + rows.to(tl.int64) * K_ALL + k, mask=row_ok, other=-1)
        w = tl.load(w_ptr + rows.to(tl.int64) * K_ALL + k, mask=row_ok, other=0.0)
        in_self = (j >= 0) & (j < n_self)
        in_c = (j >= n_self) & (j - n_self < M)
        xs, ss = _load_rows(a_ptr, a_s0, a_s1, j, in_self, D, NORMALIZE, BLOCK_D)
        xc, sc = _load_rows(c_ptr, c_s0, c_s1, j - n_self, in_c, D, NORMALIZE, BLOCK_D)
        x = tl.where(in_self[:, None], xs * ss[:, None], xc * sc[:, None])
        acc += tl.where((in_self | in_c)[:, None], w[:, None] * x, 0.0)
    a, a_scale = _load_rows(a_ptr, a_s0, a_s1, rows, row_ok, D, NORMALIZE, BLOCK_D)
    g = _normalize_backward(a, a_scale, acc * inv_t, NORMALIZE)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * D + d[None, :], g,
             mask=row_ok[:, None] & (d[None, :] < D))


@triton.jit
def _columns_kernel(a_ptr, a_s0, a_s1, c_ptr, c_s0, c_s1, order_ptr, starts_ptr, w_ptr,
                    out_self_ptr, out_c_ptr, D, n_self, K_ALL, inv_t,
                    NORMALIZE: tl.constexpr, BLOCK_D: tl.constexpr):
    j = tl.program_id(0).to(tl.int64)
    start = tl.load(starts_ptr + j)
    end = tl.load(starts_ptr + j + 1)
    one = tl.arange(0, 1)
    d = tl.arange(0, BLOCK_D)
    acc = tl.zeros([1, BLOCK_D], tl.float32)
    for q in range(start, end):
        e = tl.load(order_ptr + q + one)
        w = tl.load(w_ptr + e)
        x, sx = _load_rows(a_ptr, a_s0, a_s1, e // K_ALL, one == 0, D, NORMALIZE, BLOCK_D)
        acc += (w * sx)[:, None] * x
    col = j + one                                            # [1]
    is_self = col < n_self
    is_c = col >= n_self
    xs, ss = _load_rows(a_ptr, a_s0, a_s1, col, is_self, D, NORMALIZE, BLOCK_D)
    xc, sc = _load_rows(c_ptr, c_s0, c_s1, col - n_self, is_c, D, NORMALIZE, BLOCK_D)
    x = tl.where(is_self[:, None], xs, xc)
    scale = tl.where(is_self, ss, sc)
    g = _normalize_backward(x, scale, acc * inv_t, NORMALIZE)
    dm = d[None, :] < D
    tl.store(out_self_ptr + col[:, None] * D + d[None, :], g, mask=dm & is_self[:, None])
    tl.store(out_c_ptr + (col - n_self)[:, None] * D + d[None, :], g, mask=dm & is_c[:, None])


def mining_backward(anchors: Tensor, contrast: Tensor, self_contrast: bool,
                    inv_temperature: float, normalize: bool, sel_idx: Tensor, coef: Tensor,
                    need_rows: bool, need_columns: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The C++ ``mining_backward`` contract (csrc/cpu/mining.cpp), fp32 results."""
    n, d = anchors.shape
    m = contrast.shape[0]
    dev = anchors.device
    f32 = dict(dtype=torch.float32, device=dev)
    g_rows = torch.zeros((n if need_rows else 0, d), **f32)
    g_self = torch.zeros((n if need_columns and self_contrast else 0, d), **f32)
    g_c = torch.zeros((m if need_columns else 0, d), **f32)
    if n == 0:
        return g_rows, g_self, g_c
    k_all = sel_idx.shape[1]
    sel_idx = sel_idx.contiguous()
    coef = coef.to(torch.float32).contiguous()
    n_self = n if self_contrast else 0
    bn, _, bd, warps = _blocks(d, dev)
    if need_rows and k_all > 0:
        _rows_kernel[(triton.cdiv(n, bn),)](
            anchors, anchors.stride(0), anchors.stride(1), contrast, contrast.stride(0),
            contrast.stride(1), sel_idx, coef, g_rows, n, m, d, n_self, k_all, inv_temperature,
            NORMALIZE=normalize, BLOCK_N=bn, BLOCK_D=bd, **_options(warps))
    total = n_self + m
    if need_columns and total > 0 and k_all > 0:
        flat = sel_idx.flatten()
        key = torch.where((flat >= 0) & (flat < total), flat, total)
        order = torch.sort(key, stable=True).indices             # (row, slot) order kept
        starts = torch.searchsorted(key[order], torch.arange(total + 1, device=dev))
        out_self = g_self if self_contrast else g_c
        _columns_kernel[(total,)](
            anchors, anchors.stride(0), anchors.stride(1), contrast, contrast.stride(0),
            contrast.stride(1), order, starts, coef, out_self, g_c, d, n_self, k_all,
            inv_temperature, NORMALIZE=normalize, BLOCK_D=bd, **_options(warps))
    return g_rows, g_self, g_c
