"""The 2021 release's procedures, re-implemented in our own code: baselines only.

The benchmarks compare the library against these, and the tests check that they compute
what the library computes (docs/design.md §5). Nothing in the library uses them.

* ``unfused_pixel_contrast``: the dense loss, operation for operation.
* ``sample_anchors_loop_2021``: the hard/easy anchor sampler (``_hard_anchor_sampling``),
  Python loops with host syncs; the library's is ``pixcontrast.sampling.sample_anchors``.
* ``memory_bank_update_loop_2021``: the enqueue (``_dequeue_and_enqueue``), Python loops
  with host syncs; the library's is ``pixcontrast.memory_bank.MemoryBank.update``.

The two loops keep the release's procedure (``unique`` per image; ``nonzero``, a CPU
``randperm``, ``int()`` of a pointer per (image, class): host syncs) but compute the
library's rule, the release's defects corrected, so that a benchmark times the same work on
both sides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["memory_bank_update_loop_2021", "sample_anchors_loop_2021",
           "unfused_pixel_contrast"]


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


def sample_anchors_loop_2021(labels: Tensor, predictions: Tensor, *, max_samples: int = 1024,
                             max_views: int = 100,
                             ignore_index: int = -1) -> tuple[Tensor, Tensor]:
    """The 2021 release's ``_hard_anchor_sampling`` with the rule of docs/design.md
    §2.5 (benchmark baseline).

    Python loops over images and classes, ``.nonzero()`` and a CPU ``randperm`` per
    (image, class): a host sync each. Computes the rule of
    ``pixcontrast.sampling.sample_anchors`` (which pairs, how many hard and easy pixels
    each) and returns its format: ``indices [max_samples]`` flat into ``B·h·w`` (-1 unused)
    and ``labels [max_samples]`` (``ignore_index`` unused), pairs in (image, class) order,
    hard pixels first. Draws from the global RNG. Not used by the library.
    """
    b, h, w = labels.shape
    hw = h * w
    y = labels.reshape(b, hw)
    y_hat = predictions.reshape(b, hw)
    pairs = []
    for i in range(b):
        this_y = y[i]
        for c in torch.unique(this_y).tolist():
            if c != ignore_index and (this_y == c).sum().item() > max_views:
                pairs.append((i, c))
    total = len(pairs)
    idx_out = torch.full((max_samples,), -1, dtype=torch.int64)
    lab_out = torch.full((max_samples,), ignore_index, dtype=torch.int64)
    if total == 0:
        return idx_out.to(labels.device), lab_out.to(labels.device)
    if total > max_samples:  # the release has no such step (it crashes with n_view = 0)
        keep = sorted(torch.randperm(total)[:max_samples].tolist())
        pairs = [pairs[k] for k in keep]
    n_view = max(min(max_samples // total, max_views), 1)
    row = 0
    for i, c in pairs:
        this_y, this_y_hat = y[i], y_hat[i]
        hard = ((this_y == c) & (this_y_hat != c)).nonzero().flatten()
        easy = ((this_y == c) & (this_y_hat == c)).nonzero().flatten()
        n_hard, n_easy = hard.numel(), easy.numel()
        if n_hard >= n_view / 2 and n_easy >= n_view / 2:
            keep_hard = n_view // 2
            keep_easy = n_view - keep_hard
        elif n_hard >= n_view / 2:
            keep_easy = n_easy
            keep_hard = n_view - keep_easy
        else:
            keep_hard = n_hard
            keep_easy = n_view - keep_hard
        hard = hard[torch.randperm(n_hard, device="cpu")[:keep_hard].to(hard.device)]
        easy = easy[torch.randperm(n_easy, device="cpu")[:keep_easy].to(easy.device)]
        sel = torch.cat([hard, easy]).cpu() + i * hw
        idx_out[row:row + n_view] = sel
        lab_out[row:row + n_view] = c
        row += n_view
    return idx_out.to(labels.device), lab_out.to(labels.device)


def memory_bank_update_loop_2021(features: Tensor, bank_labels: Tensor, pointers: Tensor,
                                 embeddings: Tensor, labels: Tensor, pixels_per_update: int,
                                 ignore_index: int = -1) -> None:
    """The 2021 release's ``_dequeue_and_enqueue``, semantics corrected, in place
    (benchmark baseline).

    ``features [K, 2, S, D]``, ``bank_labels [K, 2, S]`` int64, ``pointers [K, 2]`` int64
    (the ``MemoryBank`` buffers); ``embeddings [B, D, h, w]``, ``labels [B, h, w]``. Python
    loops over images and classes, a host sync per (image, class): ``unique``, ``nonzero``,
    ``int(pointer)``. The release's defects are fixed so that it writes what
    ``MemoryBank.update`` writes: pixel entries are pixels of the class (the release drew
    them from the whole image), the pixel pointer steps by the k entries written (it stepped
    by 1), class 0 is kept, the rings wrap around. Draws from the global RNG. Not used by the
    library.
    """
    num_classes, _, size, dim = features.shape
    for b in range(embeddings.shape[0]):
        feat = embeddings[b].detach().reshape(dim, -1)
        lab = labels[b].reshape(-1)
        for c in torch.unique(lab).tolist():
            if c == ignore_index or not 0 <= c < num_classes:
                continue
            idxs = (lab == c).nonzero().squeeze(1)
            # segment entry
            mean = feat[:, idxs].float().mean(1)
            ptr = int(pointers[c, 0])
            features[c, 0, ptr] = F.normalize(mean, dim=0).to(features.dtype)
            bank_labels[c, 0, ptr] = c
            pointers[c, 0] = (ptr + 1) % size
            # pixel entries: k random pixels of the class (the release took them from the
            # whole image and stepped the pointer by 1)
            perm = torch.randperm(idxs.shape[0])
            k = min(idxs.shape[0], pixels_per_update)
            pix = feat[:, idxs[perm[:k].to(idxs.device)]].T.float()
            ptr = int(pointers[c, 1])
            slots = (ptr + torch.arange(k, device=features.device)) % size
            features[c, 1, slots] = F.normalize(pix, dim=1).to(features.dtype)
            bank_labels[c, 1, slots] = c
            pointers[c, 1] = (ptr + k) % size
