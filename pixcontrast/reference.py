"""The dense plain-PyTorch formulation: the ``"reference"`` backend.

It materialises the full ``N × M`` logits matrix on purpose. ``pixel_contrast_reference``
is the test oracle's twin (run it on float64 inputs and it *is* the oracle); it is kept
short so that it is obviously right. The 2021 release's formulation, the benchmarks'
baseline, is ``pixcontrast.baselines.unfused_pixel_contrast``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pixel_contrast_reference", "reference_row_terms"]


def _columns(
    a: Tensor, labels: Tensor, contrast: Tensor | None, contrast_labels: Tensor | None,
    self_contrast: bool, normalize: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Contrast set ``[anchors (if self_contrast)] ++ contrast`` and the self-pair mask."""
    n = a.shape[0]
    cols, col_labels = [], []
    if self_contrast:
        cols.append(a)
        col_labels.append(labels)
    if contrast is not None and contrast.shape[0] > 0:
        c = contrast.to(a.dtype)
        cols.append(F.normalize(c, dim=1) if normalize else c)
        col_labels.append(contrast_labels)
    if cols:
        c, z = torch.cat(cols), torch.cat(col_labels)
    else:
        c, z = a.new_zeros((0, a.shape[1])), labels.new_zeros((0,))
    self_pair = torch.zeros(n, c.shape[0], dtype=torch.bool, device=a.device)
    if self_contrast:
        self_pair[:, :n] = torch.eye(n, dtype=torch.bool, device=a.device)
    return c, z, self_pair


def reference_row_terms(
    anchors: Tensor, labels: Tensor, contrast: Tensor | None, contrast_labels: Tensor | None,
    self_contrast: bool, inv_temperature: float, ignore_index: int, normalize: bool,
    compute_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row terms of the kernel contract (csrc/ops.cpp), computed densely.

    Returns ``(row_loss, lse, pos_sig, num_pos)``, each ``[N]`` in the compute dtype
    (float64 inputs stay float64; lower precisions are promoted to float32 unless
    ``compute_dtype`` asks for the logits product in another dtype). Differentiable.
    """
    acc = torch.promote_types(anchors.dtype, torch.float32)
    a = anchors.to(acc)
    a = F.normalize(a, dim=1) if normalize else a
    c, z, self_pair = _columns(a, labels, contrast, contrast_labels, self_contrast, normalize)
    if compute_dtype is not None and compute_dtype != acc:
        s = (a.to(compute_dtype) @ c.to(compute_dtype).T).to(acc) * inv_temperature
    else:
        s = (a @ c.T) * inv_temperature

    valid = (labels != ignore_index)[:, None] & (z != ignore_index)[None, :] & ~self_pair
    same = labels[:, None] == z[None, :]
    pos, neg = valid & same, valid & ~same
    has_neg = neg.any(dim=1, keepdim=True)
    # Rows without a negative: log-sum-exp over a dummy row, then -inf, so that no
    # gradient (and no NaN) flows out of an empty set.
    lse = torch.logsumexp(torch.where(has_neg, s.masked_fill(~neg, float("-inf")), 0.0), dim=1)
    lse = torch.where(has_neg[:, 0], lse, float("-inf"))
    x = lse[:, None] - s
    num_pos = pos.sum(dim=1).to(acc)
    row_loss = torch.where(pos, F.softplus(x), 0.0).sum(dim=1) / num_pos.clamp(min=1)
    pos_sig = torch.where(pos, torch.sigmoid(x), 0.0).sum(dim=1)
    return row_loss, lse, pos_sig, num_pos


def reduce_rows(
    row_loss: Tensor, num_pos: Tensor, scale: float, reduction: str,
) -> Tensor:
    """``(τ/τ_b)``-scaled mean over anchors with a positive, sum, or the ``[N]`` vector."""
    per_row = row_loss * scale
    if reduction == "none":
        return per_row
    total = per_row.sum()
    if reduction == "sum":
        return total
    # Sync-free mean: rows without positives contribute exactly 0 to ``total``; an empty
    # batch divides 0 by 1 and gives 0 with zero gradient.
    return total / (num_pos > 0).sum().clamp(min=1).to(total.dtype)


def pixel_contrast_reference(
    anchors: Tensor, labels: Tensor, contrast: Tensor | None = None,
    contrast_labels: Tensor | None = None, *, temperature: float = 0.1,
    base_temperature: float = 0.07, ignore_index: int = -1, normalize: bool = True,
    include_anchors: bool = False, reduction: str = "mean",
    compute_dtype: torch.dtype | None = None,
) -> Tensor:
    """Dense per-positive InfoNCE (DESIGN.md §1). Materialises ``[N, M]`` logits.

    Equivalent, for one anchor row ``i`` (``s = â·ĉᵀ/τ``)::

        ℓ_i = -mean_p log(exp(s_ip) / (exp(s_ip) + Σ_n exp(s_in)))
    """
    self_contrast = contrast is None or include_anchors
    row_loss, _, _, num_pos = reference_row_terms(
        anchors, labels, contrast, contrast_labels, self_contrast, 1.0 / temperature,
        ignore_index, normalize, compute_dtype,
    )
    out = reduce_rows(row_loss, num_pos, temperature / base_temperature, reduction)
    return out.to(anchors.dtype)
