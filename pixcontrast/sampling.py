"""Segmentation-aware hard anchor sampling (docs/design.md §2, "Anchor sampling rules").

``sample_anchors(labels, predictions, *, max_samples=1024, max_views=100, ignore_index=-1,
generator=None, backend="auto") -> (indices, anchor_labels)``

* ``labels [B, h, w]`` and ``predictions [B, h, w]``: integer class maps at the embedding
  grid, same device. Label values are arbitrary integers (``|label| < 2**62``); the number
  of classes is never needed.
* ``indices [max_samples]`` int64: flat indices into ``B·h·w`` of the sampled pixels, pairs
  in (image, class) order, hard pixels before easy ones inside a pair; ``-1`` on unused rows.
* ``anchor_labels [max_samples]`` int64: the label of each sampled pixel, ``ignore_index`` on
  unused rows.

The rule, exactly: class ``c`` is eligible in image ``b`` when it has more than
``max_views`` pixels there (ignore label excluded); ``T`` eligible pairs;
``V = max(min(max_samples // T, max_views), 1)``; when ``T > max_samples`` a uniformly
random subset of ``max_samples`` pairs is kept. Per kept pair, ``hard`` = label c and
prediction ≠ c, ``easy`` = label c and prediction = c:

* ``2·hard ≥ V and 2·easy ≥ V``: ``V//2`` hard and ``V − V//2`` easy;
* else ``2·hard ≥ V``: every easy pixel and ``V − easy`` hard ones;
* else: every hard pixel and ``V − hard`` easy ones;

uniformly without replacement inside each set. Equivalent (slow, host-synchronising)
PyTorch, the 2021 release's loop::

    for b in range(B):
        for c in labels[b].unique():               # ignore_index skipped
            if (labels[b] == c).sum() <= max_views: continue
            hard = ((labels[b] == c) & (predictions[b] != c)).flatten().nonzero()
            easy = ((labels[b] == c) & (predictions[b] == c)).flatten().nonzero()
            nh, ne = quotas(len(hard), len(easy), V)
            take hard[randperm(len(hard))[:nh]], easy[randperm(len(easy))[:ne]]

How it runs without a host synchronisation or a loop over images and classes (every
tensor has a shape fixed by ``B·h·w`` and ``max_samples``):

1. Per image, pixels are put in random order (argsort of uniform 62-bit keys), then stably sorted
   by ``2·label + (prediction == label)``: groups (image, class, hard/easy) become
   contiguous runs, hard before easy, each in uniformly random order.
2. Run boundaries by diffs; class-group ids by a cumsum; rank in the run by ``pos −
   cummax(run start)``; per class-group hard/easy counts (the histogram) by scatter_add
   into ``[B·h·w]`` buffers (class-group ids never exceed the pixel count).
3. Eligible class-groups are compacted (cumsum + scatter into a dump slot) into
   ``P = B·h·w // (max_views + 1)`` slots, the most there can be; the ``max_samples``
   subset is "random key rank < max_samples".
4. Quotas per pair from the rule; a pixel is selected when its rank < its set's quota; its
   output row is the exclusive cumsum of ``V`` over kept pairs before it + (``0`` for hard,
   the hard quota for easy) + rank, scattered into a ``[max_samples + 1]`` buffer whose last
   row is a dump for the unselected pixels.

On CUDA (``backend="auto"``) steps 2's histogram and step 4's selection and gather run as
Triton kernels (kernels/sampling.py); the sort stays in PyTorch. ``backend="cuda"`` runs
the same two steps as the C++/CUDA ops ``torch.ops.pixcontrast.sampling_run_histogram`` and
``sampling_select_scatter`` (csrc/cuda/sampling.cu), without Triton's JIT; it needs CUDA
tensors and an extension built with CUDA, and raises otherwise (it never falls back). All
paths share the random draws and the sort, and the kernels are deterministic, so for the
same generator state they return the same samples (the tests compare them bit for bit).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pixcontrast._backends import (
    OpBackends, cuda_reasons, missing_cuda_kernels, runs_anywhere, triton_reasons,
)
from pixcontrast._extension import extension_available

__all__ = ["sample_anchors", "sampling_quotas", "BACKENDS"]

_CUDA_OPS = ("sampling_run_histogram", "sampling_select_scatter")
_MISSING_CUDA = missing_cuda_kernels(_CUDA_OPS)  # once: the query does not trace
# The histogram and selection kernels' backends (the sorts stay in PyTorch for all). On an
# H200 (benchmarks/results/h200-2026-11-30): CUDA 1.55 ms, Triton 1.59, torch 1.85.
BACKENDS = OpBackends(
    "sample_anchors",
    checks={"torch": runs_anywhere, "triton": triton_reasons,
            "cuda": lambda device: cuda_reasons(device, _MISSING_CUDA)},
    priority={"cuda": ("cuda", "triton", "torch"), "cpu": ("torch",)})


def _fake_run_histogram(run_key, rank, cls, easy, valid, hw):
    return run_key.new_empty((run_key.shape[0], 2), dtype=torch.int64)


def _fake_select_scatter(cls, easy, rank, lab, pix, pair_of_cls, kept, pair_hard, pair_easy,
                         offset, views, out_idx, out_lab, ignore_index):
    return None  # writes out_idx / out_lab in place (the schema says so)


if extension_available():  # fake kernels: torch.compile traces the CUDA ops
    torch.library.register_fake("pixcontrast::sampling_run_histogram")(_fake_run_histogram)
    torch.library.register_fake("pixcontrast::sampling_select_scatter")(_fake_select_scatter)


# The Triton launchers of kernels/sampling.py as torch.library ops, registered like the
# InfoNCE ones (same signatures as the C++ schemas of csrc/ops.cpp, a fake kernel each).
@torch.library.custom_op("pixcontrast::sampling_run_histogram_triton", mutates_args=())
def _run_histogram_triton(run_key: Tensor, rank: Tensor, cls: Tensor, easy: Tensor,
                          valid: Tensor, hw: int) -> Tensor:
    from pixcontrast.kernels.sampling import run_histogram
    return run_histogram(run_key, rank, cls, easy, valid, hw)


@torch.library.custom_op("pixcontrast::sampling_select_scatter_triton",
                         mutates_args=("out_idx", "out_lab"))
def _select_scatter_triton(cls: Tensor, easy: Tensor, rank: Tensor, lab: Tensor, pix: Tensor,
                           pair_of_cls: Tensor, kept: Tensor, pair_hard: Tensor,
                           pair_easy: Tensor, offset: Tensor, views: Tensor, out_idx: Tensor,
                           out_lab: Tensor, ignore_index: int) -> None:
    from pixcontrast.kernels.sampling import select_scatter
    select_scatter(cls, easy, rank, lab, pix, pair_of_cls, kept, pair_hard, pair_easy, offset,
                   views, out_idx, out_lab, ignore_index)


_run_histogram_triton.register_fake(_fake_run_histogram)
_select_scatter_triton.register_fake(_fake_select_scatter)


def sampling_quotas(hard: Tensor, easy: Tensor, views: Tensor | int) -> tuple[Tensor, Tensor]:
    """Numbers of hard and easy pixels to take from a pair with ``hard``/``easy`` pixels.

    Any integer tensors that broadcast; ``views`` is ``V``. The comparisons ``x ≥ V/2`` are
    done as ``2·x ≥ V`` (exact in integers).
    """
    half = views // 2
    both = (2 * hard >= views) & (2 * easy >= views)
    many_hard = 2 * hard >= views
    n_hard = torch.where(both, half, torch.where(many_hard, views - easy, hard))
    n_easy = torch.where(both, views - half, torch.where(many_hard, easy, views - hard))
    return n_hard, n_easy


def _is_integer(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _check_inputs(labels: Tensor, predictions: Tensor, max_samples: int, max_views: int,
                  backend: str) -> None:
    for name, t in (("labels", labels), ("predictions", predictions)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"{name} must be [B, h, w], got shape {tuple(t.shape)}")
        if not _is_integer(t):
            raise TypeError(f"{name} must have an integer dtype, got {t.dtype}")
    if labels.shape != predictions.shape:
        raise ValueError(f"predictions shape {tuple(predictions.shape)} differs from labels "
                         f"shape {tuple(labels.shape)}")
    if labels.device != predictions.device:
        raise ValueError(f"predictions are on {predictions.device} but labels are on "
                         f"{labels.device}")
    for name, v in (("max_samples", max_samples), ("max_views", max_views)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    BACKENDS.validate_name(backend)


def sample_anchors(labels: Tensor, predictions: Tensor, *, max_samples: int = 1024,
                   max_views: int = 100, ignore_index: int = -1,
                   generator: torch.Generator | None = None,
                   backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Pick up to ``max_samples`` anchor pixels by the paper's hard-anchor rule (module doc).

    Args:
        labels: ``[B, h, w]`` integer ground truth at the embedding grid.
        predictions: ``[B, h, w]`` integer predicted classes, same device.
        max_samples: output capacity (``N`` anchors at most).
        max_views: ``V`` cap per (image, class) pair; a pair needs more pixels than this.
        ignore_index: label of pixels that take no part; fills unused output rows.
        generator: ``torch.Generator`` on the tensors' device, for reproducible draws.
        backend: ``"auto"`` (Triton kernels for CUDA tensors when triton is installed,
            PyTorch otherwise), ``"torch"``, ``"triton"`` (CPU tensors only under
            ``TRITON_INTERPRET=1``) or ``"cuda"`` (the C++/CUDA kernels of the extension:
            CUDA tensors and a CUDA build of ``pixcontrast._C``; raises otherwise).

    Returns:
        ``(indices [max_samples] int64, anchor_labels [max_samples] int64)``; unused rows
        hold ``-1`` and ``ignore_index``.
    """
    _check_inputs(labels, predictions, max_samples, max_views, backend)
    backend = BACKENDS.choose(backend, labels.device)
    if labels.dtype == torch.int64 and labels.numel():
        # The sort key is 2·label + easy in int64: |label| ≥ 2^62 would wrap. Refused
        # without a host synchronisation (a device-side assert on CUDA).
        lo, hi = torch.aminmax(labels)  # one reduction over the map
        torch._assert_async((lo >= -2**62) & (hi < 2**62),
                            "sample_anchors: labels must lie in [-2^62, 2^62)")
    return _sample(labels, predictions, max_samples, max_views, ignore_index, generator,
                   kernels=backend)


def _sample(labels: Tensor, predictions: Tensor, max_samples: int, max_views: int,
            ignore_index: int, generator: torch.Generator | None, kernels: str
            ) -> tuple[Tensor, Tensor]:
    """The driver; ``kernels`` ("torch", "triton" or "cuda") runs steps 2 and 4."""
    dev = labels.device
    b, h, w = labels.shape
    hw = h * w
    n = b * hw
    out_idx = torch.full((max_samples + 1,), -1, dtype=torch.int64, device=dev)
    out_lab = torch.full((max_samples + 1,), ignore_index, dtype=torch.int64, device=dev)
    if n == 0:
        return out_idx[:max_samples], out_lab[:max_samples]

    lab = labels.reshape(b, hw).long()
    pred = predictions.reshape(b, hw).long()

    # 1. Per image: random order, then a stable sort by (label, easy): runs of
    #    (class, hard/easy) in random order. 62-bit integer keys: a tie (which would favour
    #    the lower index) has probability 2^-62 per pair, where float32 keys tie at 2^-24
    #    (~30 tied pairs per 32k-pixel image); and they sort ~25% faster than float64
    #    (6.5 vs 8.4 ms for 8 x 32768 on 2 CPU threads).
    keys = torch.randint(0, 2**62, (b, hw), generator=generator, device=dev)
    order = keys.argsort(dim=1)
    run_key = (lab * 2 + (pred == lab).long()).gather(1, order)
    run_key, order2 = torch.sort(run_key, dim=1, stable=True)
    pix = (order.gather(1, order2) + torch.arange(b, device=dev).unsqueeze(1) * hw).reshape(n)
    run_key = run_key.reshape(n)
    lab = run_key >> 1                              # floor(run_key / 2): the label
    easy = (run_key & 1).bool()

    # 2. Runs, class-groups, rank in run, counts per class-group.
    pos = torch.arange(n, device=dev)
    row_start = torch.zeros((b, hw), dtype=torch.bool, device=dev)
    row_start[:, 0] = True
    row_start = row_start.reshape(n)
    new_run = row_start.clone()
    new_run[1:] |= run_key[1:] != run_key[:-1]
    new_class = row_start
    new_class[1:] |= lab[1:] != lab[:-1]
    rank = pos - torch.where(new_run, pos, 0).cummax(0).values
    cls = new_class.long().cumsum(0) - 1           # class-group id, (image, label) order
    valid = lab != ignore_index
    if kernels == "triton":
        counts = _run_histogram_triton(run_key, rank, cls, easy, valid, hw)
        n_hard, n_easy = counts[:, 0], counts[:, 1]
    elif kernels == "cuda":
        counts = torch.ops.pixcontrast.sampling_run_histogram(run_key, rank, cls, easy, valid,
                                                              hw)
        n_hard, n_easy = counts[:, 0], counts[:, 1]
    else:
        n_hard = torch.zeros(n, dtype=torch.int64, device=dev).scatter_add_(
            0, cls, (valid & ~easy).long())
        n_easy = torch.zeros(n, dtype=torch.int64, device=dev).scatter_add_(
            0, cls, (valid & easy).long())
    eligible = n_hard + n_easy > max_views

    # 3. Compact the eligible pairs (at most n // (max_views + 1) of them) in class-group
    #    order; keep a uniformly random max_samples of them.
    p = max(n // (max_views + 1), 1)
    pair_of_cls = torch.where(eligible, eligible.long().cumsum(0) - 1, p)  # p: not a pair
    cls_of_pair = torch.full((p + 1,), -1, dtype=torch.int64, device=dev).scatter_(
        0, pair_of_cls, torch.arange(n, device=dev))[:p]  # slot p: dump
    is_pair = cls_of_pair >= 0
    num_pairs = is_pair.sum()
    views = (max_samples // num_pairs.clamp(min=1)).clamp(min=1, max=max_views)
    if max_samples < p:  # static: only then can T exceed max_samples
        pair_keys = torch.rand(p, generator=generator, device=dev, dtype=torch.float64)
        pair_order = torch.where(is_pair, pair_keys, 2.0).argsort()
        key_rank = torch.empty_like(pair_order).scatter_(
            0, pair_order, torch.arange(p, device=dev))
        kept = is_pair & (key_rank < max_samples)
    else:
        kept = is_pair
    cls_safe = cls_of_pair.clamp(min=0)
    pair_hard = torch.where(kept, n_hard[cls_safe], 0)
    pair_easy = torch.where(kept, n_easy[cls_safe], 0)
    take = torch.where(kept, views, 0)
    offset = take.cumsum(0) - take                # exclusive: rows before this pair

    # 4. Selection and scatter into the fixed-capacity output.
    if kernels == "triton":
        _select_scatter_triton(cls, easy, rank, lab, pix, pair_of_cls, kept, pair_hard,
                               pair_easy, offset, views, out_idx, out_lab, ignore_index)
        return out_idx[:max_samples], out_lab[:max_samples]
    if kernels == "cuda":
        torch.ops.pixcontrast.sampling_select_scatter(
            cls, easy, rank, lab, pix, pair_of_cls, kept, pair_hard, pair_easy, offset,
            views.reshape(1), out_idx, out_lab, ignore_index)
        return out_idx[:max_samples], out_lab[:max_samples]
    q_hard, q_easy = sampling_quotas(pair_hard, pair_easy, views)
    pad = torch.zeros(1, dtype=torch.int64, device=dev)
    q_hard, q_easy = torch.cat([q_hard, pad]), torch.cat([q_easy, pad])  # pair p: none
    offset = torch.cat([offset, pad])
    pair = torch.where(valid, pair_of_cls[cls], p)
    quota = torch.where(easy, q_easy[pair], q_hard[pair])
    selected = rank < quota
    row = offset[pair] + torch.where(easy, q_hard[pair], 0) + rank
    row = torch.where(selected, row, max_samples)
    out_idx.scatter_(0, row, pix)
    out_lab.scatter_(0, row, lab)
    return out_idx[:max_samples], out_lab[:max_samples]
