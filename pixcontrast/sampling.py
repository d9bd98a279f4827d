"""Segmentation-aware hard anchor sampling (docs/design.md §2, "Anchor sampling rules").

``sample_anchors(labels, predictions, *, max_samples=1024, max_views=100, ignore_index=-1,
generator=None, backend="auto") -> (indices, anchor_labels)``

* ``labels [B, h, w]`` and ``predictions [B, h, w]``: integer class maps at the embedding
  grid, same device. Label values are arbitrary integers (``|label| < 2**62`` on the torch
  path, any int64 on the fused ones); the number of classes is never needed.
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

How the torch path runs without a host synchronisation or a loop over images and classes
(every tensor has a shape fixed by ``B·h·w`` and ``max_samples``):

1. One random draw (``_draw_keys``): ``R``-bit integer keys, one per pixel, then one per
   pair slot when ``max_samples < P``. Per image, the pixels are put in random order (a
   stable argsort of the keys), then stably sorted by ``2·label + (prediction == label)``:
   groups (image, class, hard/easy) become contiguous runs, hard before easy, each in
   (key, pixel index) order.
2. Run boundaries by diffs; class-group ids by a cumsum; rank in the run by ``pos −
   cummax(run start)``; per class-group hard/easy counts (the histogram) by scatter_add
   into ``[B·h·w]`` buffers (class-group ids never exceed the pixel count).
3. Eligible class-groups are compacted (cumsum + scatter into a dump slot) into
   ``P = B·h·w // (max_views + 1)`` slots, the most there can be; the ``max_samples``
   subset is the pairs of lowest (key, slot) (a stable argsort of their keys).
4. Quotas per pair from the rule; a pixel is selected when its rank < its set's quota; its
   output row is the exclusive cumsum of ``V`` over kept pairs before it + (``0`` for hard,
   the hard quota for easy) + rank, scattered into a ``[max_samples + 1]`` buffer whose last
   row is a dump for the unselected pixels.

The fused paths (``_sample_fused``), for CUDA tensors: ``backend="cuda"`` (the default
there when the extension has the kernels) runs the C++/CUDA ops
``torch.ops.pixcontrast.sample_histogram`` and ``sample_select`` of csrc/cuda/sampling.cu
(no JIT; CUDA tensors and an extension built with CUDA, else it raises, never falls back),
``backend="triton"`` their twins of kernels/sampling.py. Four launches: the same random
draw, a histogram kernel, one sort, a select kernel; any int64 label value works there
(the torch path refuses ``|label| ≥ 2^62``, where ``2·label`` would wrap). All paths draw the same keys and order each (class, hard/easy)
set by (key, pixel index), so for one generator state they return the same samples (the
tests compare them bit for bit).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pixcontrast._backends import (
    OpBackends, cuda_reasons, missing_cuda_kernels, runs_anywhere, triton_reasons,
)
from pixcontrast._extension import extension_available

__all__ = ["sample_anchors", "sampling_quotas", "BACKENDS"]

_CUDA_OPS = ("sample_histogram", "sample_select")
_MISSING_CUDA = missing_cuda_kernels(_CUDA_OPS)  # once: the query does not trace
# "auto" on CUDA: the fused CUDA kernels first (fastest before the fusion, 1.55 ms against
# Triton's 1.59 and torch's 1.85 on an H200, benchmarks/results/h200-2026-11-30; and
# predicted ~2x faster than the fused Triton ones, docs/notes/sampling-bank.md), then Triton.
BACKENDS = OpBackends(
    "sample_anchors",
    checks={"torch": runs_anywhere, "triton": triton_reasons,
            "cuda": lambda device: cuda_reasons(device, _MISSING_CUDA)},
    priority={"cuda": ("cuda", "triton", "torch"), "cpu": ("torch",)})

# The completion counter of the histogram kernel's last program, per device: one int32,
# zero between calls (the last program resets it). Two calls must not run concurrently on
# different streams of one device.
_COUNTERS: dict[torch.device, Tensor] = {}


def _counter(device: torch.device) -> Tensor:
    c = _COUNTERS.get(device)
    if c is None:
        c = _COUNTERS[device] = torch.zeros(1, dtype=torch.int32, device=device)
    return c


def _draw_keys(b: int, hw: int, max_samples: int, max_views: int,
               generator: torch.Generator | None, device: torch.device) -> Tensor:
    """The one random draw of a call, shared by every path: ``R``-bit integer keys
    (``kernels.sampling.rand_bits``), ``b·hw`` for the pixels, then ``P`` for the pair
    slots when ``max_samples < P`` (only then can ``T`` exceed ``max_samples``).

    Integer keys: a tie (broken by the lower index in every path) has probability
    ``2^-R`` per pair (``R`` ≥ 47 for 32k-pixel images), where float32 keys tie at 2^-24.
    """
    n = b * hw
    p = max(n // (max_views + 1), 1)
    size = n + (p if max_samples < p else 0)
    return torch.randint(0, 2 ** _rand_bits(hw, max_views), (size,), generator=generator,
                         device=device)


def _rand_bits(hw: int, max_views: int) -> int:
    """Same as kernels.sampling.rand_bits (no triton import needed for the torch path)."""
    return min(62, 63 - (2 * max(hw // (max_views + 1), 1)).bit_length())


# The Triton launchers of kernels/sampling.py as torch.library ops (fake kernels give
# torch.compile their shapes; TorchDispatchMode sees one op per kernel launch).
@torch.library.custom_op("pixcontrast::sample_histogram_triton", mutates_args=("counter",))
def _histogram_triton(labels: Tensor, predictions: Tensor, keys: Tensor, counter: Tensor,
                      max_samples: int, max_views: int, ignore_index: int
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from pixcontrast.kernels.sampling import sample_histogram
    return sample_histogram(labels, predictions, keys, counter, max_samples, max_views,
                            ignore_index)


def _fake_histogram(labels, predictions, keys, counter, max_samples, max_views, ignore_index):
    b, hw = labels.shape
    pimg = max(hw // (max_views + 1), 1)
    i64 = dict(dtype=torch.int64, device=labels.device)
    return (labels.new_empty((b, hw), **i64), labels.new_empty((7, b * pimg), **i64),
            labels.new_empty((max_samples,), **i64), labels.new_empty((max_samples,), **i64))


@torch.library.custom_op("pixcontrast::sample_select_triton",
                         mutates_args=("out_idx", "out_lab"))
def _select_triton(sorted_keys: Tensor, perm: Tensor, ws: Tensor, out_idx: Tensor,
                   out_lab: Tensor, max_views: int) -> None:
    from pixcontrast.kernels.sampling import sample_select
    sample_select(sorted_keys, perm, ws, out_idx, out_lab, max_views)


def _fake_select(sorted_keys, perm, ws, out_idx, out_lab, max_views):
    return None  # writes out_idx / out_lab in place (the schema says so)


_histogram_triton.register_fake(_fake_histogram)
_select_triton.register_fake(_fake_select)
if extension_available() and hasattr(torch.ops.pixcontrast, "sample_select"):
    # The C++ twins (csrc/sampling_ops.cpp; absent from an extension built from older
    # sources): fake kernels, so that torch.compile traces them and meta tensors run them.
    torch.library.register_fake("pixcontrast::sample_histogram")(_fake_histogram)
    torch.library.register_fake("pixcontrast::sample_select")(_fake_select)


def _sample_fused(labels: Tensor, predictions: Tensor, max_samples: int, max_views: int,
                  ignore_index: int, generator: torch.Generator | None, kernels: str
                  ) -> tuple[Tensor, Tensor]:
    """The fused paths (module doc): randint, histogram kernel, one sort, select kernel;
    ``kernels`` is "triton" or "cuda". The same samples as ``_sample`` for the same
    generator state."""
    b, h, w = labels.shape
    hw = h * w
    if b * hw == 0:
        return (torch.full((max_samples,), -1, dtype=torch.int64, device=labels.device),
                torch.full((max_samples,), ignore_index, dtype=torch.int64,
                           device=labels.device))
    keys = _draw_keys(b, hw, max_samples, max_views, generator, labels.device)
    lab = labels.reshape(b, hw).contiguous()      # views of the caller's maps: no launch
    pred = predictions.reshape(b, hw).contiguous()
    counter = _counter(labels.device)
    if kernels == "triton":  # reads any integer dtype
        sort_keys, ws, out_idx, out_lab = _histogram_triton(lab, pred, keys, counter,
                                                            max_samples, max_views,
                                                            ignore_index)
    else:  # the C++ ops take int64 maps
        sort_keys, ws, out_idx, out_lab = torch.ops.pixcontrast.sample_histogram(
            lab.long(), pred.long(), keys, counter, max_samples, max_views, ignore_index)
    sorted_keys, perm = torch.sort(sort_keys, dim=1, stable=True)
    if kernels == "triton":
        _select_triton(sorted_keys, perm, ws, out_idx, out_lab, max_views)
    else:
        torch.ops.pixcontrast.sample_select(sorted_keys, perm, ws, out_idx, out_lab, max_views)
    return out_idx, out_lab


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
        backend: ``"auto"`` (for CUDA tensors the fused CUDA kernels when the extension
            has them, else the fused Triton ones when triton is installed; PyTorch
            otherwise), ``"torch"``, ``"triton"`` (CPU tensors only under
            ``TRITON_INTERPRET=1``) or ``"cuda"`` (the C++/CUDA kernels of the extension:
            CUDA tensors and a CUDA build of ``pixcontrast._C``; raises otherwise).

    Returns:
        ``(indices [max_samples] int64, anchor_labels [max_samples] int64)``; unused rows
        hold ``-1`` and ``ignore_index``.
    """
    _check_inputs(labels, predictions, max_samples, max_views, backend)
    backend = BACKENDS.choose(backend, labels.device)
    if backend != "torch":  # any int64 label: the kernels never form 2·label
        return _sample_fused(labels, predictions, max_samples, max_views, ignore_index,
                             generator, kernels=backend)
    if labels.dtype == torch.int64 and labels.numel():
        # The sort key is 2·label + easy in int64: |label| ≥ 2^62 would wrap. Refused
        # without a host synchronisation (a device-side assert on CUDA).
        lo, hi = torch.aminmax(labels)  # one reduction over the map
        torch._assert_async((lo >= -2**62) & (hi < 2**62),
                            "sample_anchors: labels must lie in [-2^62, 2^62)")
    return _sample(labels, predictions, max_samples, max_views, ignore_index, generator)


def _sample(labels: Tensor, predictions: Tensor, max_samples: int, max_views: int,
            ignore_index: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """The torch path (module doc, steps 1-4)."""
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

    # 1. Per image: random order (a stable argsort of R-bit keys, _draw_keys), then a
    #    stable sort by (label, easy): runs of (class, hard/easy), each in (key, pixel
    #    index) order, the order of the Triton path's one sort.
    keys = _draw_keys(b, hw, max_samples, max_views, generator, dev)
    order = keys[:n].view(b, hw).argsort(dim=1, stable=True)
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
    if max_samples < p:  # static: only then can T exceed max_samples (and keys has them)
        pair_order = torch.where(is_pair, keys[n:], 2**62).argsort(stable=True)
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
