"""Triton kernel of the memory-bank write (docs/design.md §2, "Memory bank semantics").

``bank_write(features, labels, values, rows, keep, entry_labels)`` scatters ``E`` entries
into the class-sorted bank, in place:

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
Uses only ``tl.program_id``, ``tl.arange``, ``tl.load`` and ``tl.store`` (Triton 3.6-3.9).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["bank_write"]

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
