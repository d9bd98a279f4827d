"""The 2021 release's procedures, re-implemented in our own code: baselines only.

The benchmarks compare the library against these, and the tests check that they compute
what the library computes (DESIGN.md §5). Nothing in the library uses them.

* ``unfused_pixel_contrast``: the dense loss, operation for operation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["unfused_pixel_contrast"]


def unfused_pixel_contrast(
    anchors: Tensor, labels: Tensor, contrast: Tensor | None = None,
    contrast_labels: Tensor | None = None, *, temperature: float = 0.1,
    base_temperature: float = 0.07,
) -> Tensor:
    """The 2021 release's dense formulation, operation for operation (benchmark baseline).

    Float32 throughout, row-max shift over all columns, float masks, a self-pair mask built
    with ``scatter_`` in self-contrast mode, and NaN for an anchor without a positive:
    exactly the behaviour users copy today. Not used by the library's loss.
    """
    a = F.normalize(anchors.float(), dim=1)
    if contrast is None:
        c, z = a, labels
    else:
        c, z = F.normalize(contrast.float(), dim=1), contrast_labels
    logits_raw = torch.matmul(a, c.T) / temperature
    logits_max, _ = torch.max(logits_raw, dim=1, keepdim=True)
    logits = logits_raw - logits_max.detach()
    mask = torch.eq(labels.view(-1, 1), z.view(1, -1)).float()
    neg_mask = 1 - mask
    if contrast is None:
        n = a.shape[0]
        self_mask = torch.ones_like(mask).scatter_(
            1, torch.arange(n, device=a.device).view(-1, 1), 0)
        mask = mask * self_mask
    neg_logits = torch.exp(logits) * neg_mask
    neg_logits = neg_logits.sum(1, keepdim=True)
    exp_logits = torch.exp(logits)
    log_prob = logits - torch.log(exp_logits + neg_logits)
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.mean()
