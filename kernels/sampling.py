"""Triton kernels of anchor sampling (docs/design.md §2; driver in pixcontrast/sampling.py).

The driver sorts the pixels of each image by (label, hard/easy, random key) in PyTorch and
computes, per sorted position, the run key ``2·label + easy``, the rank in its run and the
class-group id. Two launchers, plain Python functions on those ``[n]`` tensors:

``run_histogram(run_key, rank, cls, easy, valid, hw) -> counts [n, 2]`` int64
    Per class-group, the number of valid hard (column 0) and easy (column 1) pixels.
    Equivalent PyTorch::

        counts = torch.zeros(n, 2, dtype=torch.int64)
        counts.view(-1).scatter_add_(0, cls * 2 + easy, valid.long())

    The runs are contiguous, so a run's count is ``rank + 1`` at its last position: one
    plain store per run, no atomics, deterministic.

``select_scatter(cls, easy, rank, lab, pix, pair_of_cls, kept, pair_hard, pair_easy,
offset, views, out_idx, out_lab, ignore_index)``
    Per pixel: its pair's quotas from the rule (``_quotas``), selected when ``rank`` < its
    set's quota, then stored at output row ``offset + (hard quota if easy) + rank``.
    Selected rows are distinct by construction, so the masked stores never collide.
    ``views`` is a one-element device tensor (no host read of ``V``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["run_histogram", "select_scatter"]

_BLOCK = 1024
_NUM_WARPS = 4


@triton.jit
def _run_histogram_kernel(run_key_ptr, rank_ptr, cls_ptr, easy_ptr, valid_ptr, counts_ptr,
                          n, hw, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n
    key = tl.load(run_key_ptr + offs, mask=mask, other=0)
    nxt_in = mask & (offs + 1 < n)
    key_next = tl.load(run_key_ptr + offs + 1, mask=nxt_in, other=0)
    # last of its run: end of the array, end of an image row, or the key changes next
    is_last = (offs + 1 == n) | ((offs + 1) % hw == 0) | (key_next != key)
    valid = tl.load(valid_ptr + offs, mask=mask, other=0) != 0
    rank = tl.load(rank_ptr + offs, mask=mask, other=0)
    cls = tl.load(cls_ptr + offs, mask=mask, other=0)
    easy = tl.load(easy_ptr + offs, mask=mask, other=0).to(tl.int64)
    tl.store(counts_ptr + cls * 2 + easy, rank + 1, mask=mask & is_last & valid)


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
def _select_scatter_kernel(cls_ptr, easy_ptr, rank_ptr, lab_ptr, pix_ptr, pair_of_cls_ptr,
                           kept_ptr, pair_hard_ptr, pair_easy_ptr, offset_ptr, views_ptr,
                           out_idx_ptr, out_lab_ptr, n, num_pairs, ignore_index,
                           BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n
    lab = tl.load(lab_ptr + offs, mask=mask, other=0)
    cls = tl.load(cls_ptr + offs, mask=mask, other=0)
    pair = tl.load(pair_of_cls_ptr + cls, mask=mask, other=num_pairs)
    in_pair = mask & (pair < num_pairs) & (lab != ignore_index)
    kept = tl.load(kept_ptr + pair, mask=in_pair, other=0) != 0
    in_pair = in_pair & kept
    views = tl.load(views_ptr)
    hard_n = tl.load(pair_hard_ptr + pair, mask=in_pair, other=0)
    easy_n = tl.load(pair_easy_ptr + pair, mask=in_pair, other=0)
    q_hard, q_easy = _quotas(hard_n, easy_n, views)
    easy = tl.load(easy_ptr + offs, mask=mask, other=0) != 0
    rank = tl.load(rank_ptr + offs, mask=mask, other=0)
    selected = in_pair & (rank < tl.where(easy, q_easy, q_hard))
    base = tl.load(offset_ptr + pair, mask=in_pair, other=0)
    row = base + tl.where(easy, q_hard, 0) + rank
    pix = tl.load(pix_ptr + offs, mask=mask, other=0)
    tl.store(out_idx_ptr + row, pix, mask=selected)
    tl.store(out_lab_ptr + row, lab, mask=selected)


def run_histogram(run_key: Tensor, rank: Tensor, cls: Tensor, easy: Tensor, valid: Tensor,
                  hw: int) -> Tensor:
    """Hard/easy counts per class-group (module doc); all inputs ``[n]`` on one device."""
    n = run_key.numel()
    counts = torch.zeros((n, 2), dtype=torch.int64, device=run_key.device)
    if n == 0:
        return counts
    grid = (triton.cdiv(n, _BLOCK),)
    _run_histogram_kernel[grid](run_key, rank, cls, easy.to(torch.int8), valid.to(torch.int8),
                                counts, n, hw, BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    return counts


def select_scatter(cls: Tensor, easy: Tensor, rank: Tensor, lab: Tensor, pix: Tensor,
                   pair_of_cls: Tensor, kept: Tensor, pair_hard: Tensor, pair_easy: Tensor,
                   offset: Tensor, views: Tensor, out_idx: Tensor, out_lab: Tensor,
                   ignore_index: int) -> None:
    """Write the selected pixels into ``out_idx``/``out_lab`` in place (module doc).

    ``pair_of_cls [n]`` maps a class-group to its pair slot (``num_pairs`` = not a pair);
    ``kept``, ``pair_hard``, ``pair_easy``, ``offset`` are ``[num_pairs]``.
    """
    n = cls.numel()
    if n == 0:
        return
    num_pairs = kept.numel()
    grid = (triton.cdiv(n, _BLOCK),)
    _select_scatter_kernel[grid](
        cls, easy.to(torch.int8), rank, lab, pix, pair_of_cls, kept.to(torch.int8),
        pair_hard, pair_easy, offset, views.reshape(1).to(torch.int64), out_idx, out_lab,
        n, num_pairs, ignore_index, BLOCK=_BLOCK, num_warps=_NUM_WARPS)
