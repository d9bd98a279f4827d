"""Hard example mining from the contrast set, and the SupCon loss (docs/design.md §2.8).

``fused_pixel_contrast(..., mining=..., loss=...)`` routes here whenever ``mining`` is set;
without mining both losses run on the InfoNCE kernels (pixcontrast/infonce.py; SupCon through
their ``supcon`` switch, docs/design.md §1.5), whose "torch" backend reuses
:func:`mining_reference` for SupCon. This op family has its own backends:

* ``"torch"`` (alias ``"reference"``): :func:`mining_reference`, dense and obviously right:
  the ``[N, M]`` logits, a stable sort per row for the selection, autograd for the
  gradients. On float64 inputs it is the tests' oracle.
* ``"cpu"``: the C++ kernels of csrc/cpu/mining.cpp. Selection by an exact radix select on
  the logits' bits (three histogram passes over the columns for fp32), then one pass that
  takes or draws the selected columns; no ``[N, M]`` matrix.
* ``"triton"``: kernels/mining.py, the same selection and backward on GPUs (float32,
  bfloat16, float16; fp32 logits): the histogram passes split the columns across programs
  (integer atomics), a count pass lets each split of the take pass start at its rank.
* ``"cuda"`` has no kernels for this family (it says so). ``"auto"``: "cpu" on CPU
  tensors, "triton" on CUDA tensors.

Selection rule, per anchor row ``i`` (valid columns only, self pair excluded):

* ``Neg(i)`` ordered by similarity descending, ``P(i)`` ascending (least similar first);
  equal logits are ordered by lowest column index (columns: the anchors first in
  self-contrast / ``include_anchors``, then the contrast rows).
* ``"hardest"``: the first ``min(K, |set|)`` of each ordered set.
* ``"semi-hard"``: the pool is the first ``Q = min(|set|, max(K, ceil(f·|set|)))`` of the
  ordered set; ``min(K, Q)`` members are drawn uniformly without replacement from it. The
  draw is Floyd's algorithm on the pool's members in column order, fed by
  ``u ~ U[0, 1)^{[N, K_neg + K_pos]}`` (float64) from ``generator``: the same ``u`` gives the
  same columns in every backend.

Loss over the selected columns (``S⁻``: selected negatives, ``S⁺``: selected positives):

* ``"infonce"``: ``ℓ_i = (1/|S⁺|) Σ_{p∈S⁺} softplus(λ_i − s_ip)``, ``λ_i = log Σ_{S⁻} e^{s}``.
* ``"supcon"``: ``ℓ_i = (1/|S⁺|) Σ_{p∈S⁺} (L_i − s_ip)``, ``L_i = log Σ_{S⁻ ∪ S⁺} e^{s}``
  (without mining: every valid column but the anchor itself).

Rows without a selected positive contribute 0 and do not count in the mean; the reduction
and the ``τ/τ_b`` scale are those of the InfoNCE op (``reduce_rows``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pixcontrast._backends import OpBackends, runs_anywhere, triton_reasons
from pixcontrast._extension import extension_available, has_kernels
from pixcontrast.infonce import _columns, reduce_rows

__all__ = ["MINING", "LOSSES", "BACKENDS", "DEFAULT_NUM_NEGATIVES", "DEFAULT_NUM_POSITIVES",
           "check_mining_arguments", "mining_reference", "mined_pixel_contrast",
           "selected_columns", "floyd_ranks", "pool_sizes"]

MINING = (None, "hardest", "semi-hard")
LOSSES = ("infonce", "supcon")
# Chosen here (the paper's text was not at hand): K_neg equals the paper's anchor budget
# (max_samples = 1024) and K_pos a quarter of it; semi_hard_fraction = 0.1 is the issue's
# "top 10 %". docs/design.md §2.8.
DEFAULT_NUM_NEGATIVES = 1024
DEFAULT_NUM_POSITIVES = 256


# --------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------

def _check_count(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def check_mining_arguments(mining, num_negatives, num_positives, semi_hard_fraction,
                           generator, loss, device: torch.device) -> None:
    """Errors that name the argument, for the mining/loss keywords of fused_pixel_contrast."""
    if mining not in MINING:
        raise ValueError(f"mining must be one of {MINING}, got {mining!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    _check_count("num_negatives", num_negatives)
    _check_count("num_positives", num_positives)
    if mining is None and (num_negatives is not None or num_positives is not None):
        raise ValueError("num_negatives / num_positives need mining='hardest' or 'semi-hard' "
                         f"(got mining=None, num_negatives={num_negatives}, "
                         f"num_positives={num_positives})")
    if (isinstance(semi_hard_fraction, bool)
            or not isinstance(semi_hard_fraction, (int, float))
            or not (0 < semi_hard_fraction <= 1)):
        raise ValueError(f"semi_hard_fraction must be a number in (0, 1], got "
                         f"{semi_hard_fraction!r}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got "
                            f"{type(generator).__name__}")
        if generator.device.type != device.type:
            raise ValueError(f"generator is on {generator.device} but the inputs are on "
                             f"{device}")


def draws(n: int, num_negatives: int, num_positives: int, generator, device,
          semi_hard: bool) -> Tensor:
    """The uniforms of the semi-hard draw, ``[N, K_neg + K_pos]`` float64 (``[N, 0]`` for
    "hardest", which draws nothing)."""
    if not semi_hard:
        return torch.empty((n, 0), dtype=torch.float64, device=device)
    return torch.rand((n, num_negatives + num_positives), dtype=torch.float64,
                      device=device, generator=generator)


# --------------------------------------------------------------------------------------
# Selection rule, dense (the reference and the oracle)
# --------------------------------------------------------------------------------------

def pool_sizes(count: Tensor, k: int, semi_hard: bool, fraction: float) -> Tensor:
    """Pool size per row: ``min(K, |set|)`` ("hardest"), ``min(|set|, max(K, ⌈f·|set|⌉))``
    ("semi-hard"). ``count`` int64 ``[N]``."""
    if not semi_hard:
        return count.clamp(max=k)
    top = torch.ceil(count.to(torch.float64) * fraction).to(torch.int64)
    return torch.minimum(count, top.clamp(min=k))


def floyd_ranks(u: Tensor, pool: Tensor) -> Tensor:
    """Floyd's uniform ``min(K, Q)``-subset of ``[0, Q)`` per row, sorted, ``-1`` padded.

    ``u [N, K]`` float64 in [0, 1), ``pool [N]`` = Q. Step ``s`` (``j = Q − k + s``,
    ``k = min(K, Q)``) draws ``t = min(⌊u_s·(j + 1)⌋, j)`` and adds ``t``, or ``j`` when ``t``
    is already taken. O(N·K²): the reference's version; the kernels use a hash set.
    """
    n, k = u.shape
    kk = pool.clamp(max=k)
    chosen = torch.full((n, k), -1, dtype=torch.int64, device=u.device)
    for s in range(k):
        j = pool - kk + s
        t = torch.minimum(torch.floor(u[:, s] * (j + 1).to(torch.float64)).to(torch.int64), j)
        taken = (chosen == t[:, None]).any(dim=1)
        chosen[:, s] = torch.where(s < kk, torch.where(taken, j, t), -1)
    big = torch.iinfo(torch.int64).max
    ranks = torch.where(chosen < 0, big, chosen).sort(dim=1).values
    return torch.where(ranks == big, -1, ranks)


def _select(s: Tensor, member: Tensor, descending: bool, k: int, semi_hard: bool,
            fraction: float, u: Tensor | None) -> Tensor:
    """Dense selection mask ``[N, M]`` among ``member`` (see the module docstring)."""
    key = (-s if descending else s).detach()
    key = key.masked_fill(~member, float("inf"))
    order = torch.sort(key, dim=1, stable=True).indices     # ties: lowest column first
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(
        s.shape[1], device=s.device).expand_as(order).contiguous())
    count = member.sum(dim=1)
    pool = pool_sizes(count, k, semi_hard, fraction)
    in_pool = member & (rank < pool[:, None])
    pool_rank = in_pool.cumsum(dim=1) - 1                    # rank in column order
    if not semi_hard:
        return in_pool & (pool_rank < k)
    ranks = floyd_ranks(u, pool)                             # sorted, -1 pads last
    ranks = torch.where(ranks < 0, torch.iinfo(torch.int64).max, ranks)
    at = torch.searchsorted(ranks, pool_rank.contiguous()).clamp(max=ranks.shape[1] - 1)
    return in_pool & (ranks.gather(1, at) == pool_rank)


def mining_reference(
    anchors: Tensor, labels: Tensor, contrast: Tensor | None = None,
    contrast_labels: Tensor | None = None, *, temperature: float = 0.1,
    base_temperature: float = 0.07, ignore_index: int = -1, normalize: bool = True,
    include_anchors: bool = False, reduction: str = "mean", mining: str | None = None,
    num_negatives: int = DEFAULT_NUM_NEGATIVES, num_positives: int = DEFAULT_NUM_POSITIVES,
    semi_hard_fraction: float = 0.1, u: Tensor | None = None, loss: str = "infonce",
    return_selection: bool = False,
):
    """Dense mining + InfoNCE / SupCon. Materialises ``[N, M]`` logits and masks.

    ``u``: the semi-hard uniforms (:func:`draws`). With ``return_selection`` also returns
    the boolean selection masks ``(negatives, positives)`` over the columns.
    """
    self_contrast = contrast is None or include_anchors
    acc = torch.promote_types(anchors.dtype, torch.float32)
    a = anchors.to(acc)
    a = F.normalize(a, dim=1) if normalize else a
    c, z, self_pair = _columns(a, labels, contrast, contrast_labels, self_contrast, normalize)
    s = (a @ c.T) / temperature
    valid = (labels != ignore_index)[:, None] & (z != ignore_index)[None, :] & ~self_pair
    same = labels[:, None] == z[None, :]
    pos, neg = valid & same, valid & ~same
    if mining is not None:
        semi = mining == "semi-hard"
        u_neg = u[:, :num_negatives] if semi else None
        u_pos = u[:, num_negatives:] if semi else None
        neg = _select(s, neg, True, num_negatives, semi, semi_hard_fraction, u_neg)
        pos = _select(s, pos, False, num_positives, semi, semi_hard_fraction, u_pos)
    denominator = neg | pos if loss == "supcon" else neg
    has = denominator.any(dim=1, keepdim=True)
    # A dummy row where the set is empty, then -inf: no NaN, no gradient out of an empty set.
    lse = torch.logsumexp(torch.where(has, s.masked_fill(~denominator, float("-inf")), 0.0), 1)
    lse = torch.where(has[:, 0], lse, float("-inf"))
    x = lse[:, None] - s
    num_pos = pos.sum(dim=1).to(acc)
    per_pos = torch.where(pos, x, 0.0) if loss == "supcon" else torch.where(pos, F.softplus(x), 0.0)
    row_loss = per_pos.sum(dim=1) / num_pos.clamp(min=1)
    out = reduce_rows(row_loss, num_pos, temperature / base_temperature, reduction)
    out = out.to(anchors.dtype)
    return (out, neg, pos) if return_selection else out


# --------------------------------------------------------------------------------------
# Loss over the selected columns (shared by the kernel backends)
# --------------------------------------------------------------------------------------

def selected_row_terms(sel_idx: Tensor, sel_logit: Tensor, num_negatives: int, supcon: bool
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """``(row_loss, num_pos, d)`` from the selected logits: ``d = ∂row_loss/∂s`` ``[N, K]``.

    Slots ``[:, :K_neg]`` are negatives, the rest positives; ``sel_idx < 0`` is empty.
    infonce: ``∂/∂s_p = −σ(λ − s_p)/k``, ``∂/∂s_n = (Σ_p σ(λ − s_p)/k)·e^{s_n − λ}``;
    supcon: ``∂/∂s_j = e^{s_j − L} − [j ∈ S⁺]/k``.
    """
    used = sel_idx >= 0
    is_pos = torch.zeros_like(used)
    is_pos[:, num_negatives:] = True
    pos = used & is_pos
    denominator = used if supcon else used & ~is_pos
    ninf = torch.tensor(float("-inf"), dtype=sel_logit.dtype, device=sel_logit.device)
    masked = torch.where(denominator, sel_logit, ninf)
    peak = masked.amax(dim=1, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, 0.0)
    total = torch.exp(masked - peak).sum(dim=1, keepdim=True)
    lse = torch.log(total) + peak                            # -inf for an empty set
    num_pos = pos.sum(dim=1).to(sel_logit.dtype)
    inv_k = 1.0 / num_pos.clamp(min=1)
    x = lse - sel_logit
    soft = torch.where(denominator, torch.exp(torch.where(denominator, sel_logit - lse, ninf)),
                       0.0)
    if supcon:
        row_loss = torch.where(pos, x, 0.0).sum(dim=1) * inv_k
        d = torch.where(num_pos[:, None] > 0, soft - pos.to(soft.dtype) * inv_k[:, None], 0.0)
    else:
        sig = torch.where(pos, torch.sigmoid(x), 0.0)
        row_loss = torch.where(pos, F.softplus(x), 0.0).sum(dim=1) * inv_k
        g = sig.sum(dim=1) * inv_k
        d = torch.where(pos, -sig * inv_k[:, None], g[:, None] * soft)
    return row_loss, num_pos, d


# --------------------------------------------------------------------------------------
# torch.library wiring: the mined op (any kernel backend)
# --------------------------------------------------------------------------------------

def _select_kernel(backend: str):
    if backend == "triton":
        from pixcontrast.kernels.mining import mining_select
        return mining_select
    return torch.ops.pixcontrast.mining_select


def _backward_kernel(backend: str):
    if backend == "triton":
        from pixcontrast.kernels.mining import mining_backward
        return mining_backward
    return torch.ops.pixcontrast.mining_backward


def _acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.custom_op("pixcontrast::mined_rows", mutates_args=())
def mined_rows(
    anchors: Tensor, labels: Tensor, contrast: Tensor, contrast_labels: Tensor, u: Tensor,
    self_contrast: bool, inv_temperature: float, ignore_index: int, normalize: bool,
    semi_hard: bool, fraction: float, num_negatives: int, num_positives: int, supcon: bool,
    need_grad: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-row mined loss: ``(row_loss [N], num_pos [N], sel_idx [N, K], d [N, K],
    row_grad [N, D])``; ``d = ∂row_loss/∂s`` of the selected logits, ``row_grad`` the
    anchors' row term (``[0, D]`` without ``need_grad``), so that backward needs the contrast
    set only when it requires grad (the bank may be updated in place in between)."""
    sel_idx, sel_logit = _select_kernel(backend)(
        anchors, labels, contrast, contrast_labels, self_contrast, inv_temperature,
        ignore_index, normalize, u, semi_hard, fraction, num_negatives, num_positives)
    row_loss, num_pos, d = selected_row_terms(sel_idx, sel_logit, num_negatives, supcon)
    if need_grad:
        row_grad = _backward_kernel(backend)(anchors, contrast, self_contrast, inv_temperature,
                                             normalize, sel_idx, d, True, False)[0]
    else:
        row_grad = d.new_empty((0, anchors.shape[1]))
    return row_loss, num_pos, sel_idx, d, row_grad


@mined_rows.register_fake
def _(anchors, labels, contrast, contrast_labels, u, self_contrast, inv_temperature,
      ignore_index, normalize, semi_hard, fraction, num_negatives, num_positives, supcon,
      need_grad, backend):
    (n, dim), k, acc = anchors.shape, num_negatives + num_positives, _acc_dtype(anchors)
    return (anchors.new_empty((n,), dtype=acc), anchors.new_empty((n,), dtype=acc),
            anchors.new_empty((n, k), dtype=torch.int64), anchors.new_empty((n, k), dtype=acc),
            anchors.new_empty((n if need_grad else 0, dim), dtype=acc))


def _refuse_double_backward() -> None:
    if torch.is_grad_enabled():
        raise RuntimeError(
            "pixcontrast: fused_pixel_contrast does not support double backward "
            "(backward with create_graph=True) through its fused kernels; use "
            "backend='torch' (the dense reference) for higher-order gradients")


def _need_grad_error() -> RuntimeError:
    return RuntimeError(
        "pixcontrast: the forward pass ran with need_grad=False (anchors did not require "
        "grad or grad mode was off) but a gradient was requested")


def _mined_setup(ctx, inputs, output):
    anchors, contrast = inputs[0], inputs[2]
    _, _, sel_idx, d, row_grad = output
    if not ctx.needs_input_grad[2]:
        contrast = contrast.new_empty((0, contrast.shape[1]))  # the bank may change in place
    ctx.save_for_backward(anchors, contrast, sel_idx, d, row_grad)
    ctx.args = (inputs[5], inputs[6], inputs[8], inputs[14], inputs[15])


def _mined_backward(ctx, grad_row_loss, *unused):
    _refuse_double_backward()
    anchors, contrast, sel_idx, d, row_grad = ctx.saved_tensors
    self_contrast, inv_temperature, normalize, need_grad, backend = ctx.args
    want_anchors, want_contrast = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
    r = grad_row_loss.to(d.dtype)
    grad_anchors = grad_contrast = None
    if want_anchors:
        if not need_grad:
            raise _need_grad_error()
        grad_anchors = r[:, None] * row_grad
    if want_contrast or (want_anchors and self_contrast):
        _, grad_self, grad_cols = _backward_kernel(backend)(
            anchors, contrast, self_contrast, inv_temperature, normalize, sel_idx,
            r[:, None] * d, False, True)
        if want_anchors and self_contrast:
            grad_anchors = grad_anchors + grad_self
        if want_contrast:
            grad_contrast = grad_cols.to(contrast.dtype)
    if grad_anchors is not None:
        grad_anchors = grad_anchors.to(anchors.dtype)
    return (grad_anchors, None, grad_contrast, *([None] * 13))


mined_rows.register_autograd(_mined_backward, setup_context=_mined_setup)


def _fake_mining_select(anchors, labels, contrast, contrast_labels, self_contrast,
                        inv_temperature, ignore_index, normalize, u, semi_hard, fraction,
                        num_negatives, num_positives):
    n, k = anchors.shape[0], num_negatives + num_positives
    return (anchors.new_empty((n, k), dtype=torch.int64),
            anchors.new_empty((n, k), dtype=_acc_dtype(anchors)))


def _fake_mining_backward(anchors, contrast, self_contrast, inv_temperature, normalize,
                          sel_idx, coef, need_rows, need_columns):
    (n, dim), acc = anchors.shape, _acc_dtype(anchors)
    return (anchors.new_empty((n if need_rows else 0, dim), dtype=acc),
            anchors.new_empty((n if need_columns and self_contrast else 0, dim), dtype=acc),
            contrast.new_empty((contrast.shape[0] if need_columns else 0, dim), dtype=acc))


_HAS_CPU_KERNELS = all(has_kernels("CPU", op) for op in ("mining_select", "mining_backward"))

if extension_available() and _HAS_CPU_KERNELS:
    torch.library.register_fake("pixcontrast::mining_select")(_fake_mining_select)
    torch.library.register_fake("pixcontrast::mining_backward")(_fake_mining_backward)


# --------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------

_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _cpu_reasons(device: torch.device, anchors: Tensor, contrast: Tensor | None = None
                 ) -> list[str]:
    reasons = []
    if device.type != "cpu":
        reasons.append(f"cpu: the inputs are on {device}, not the CPU")
    if anchors.dtype not in _CPU_DTYPES:
        reasons.append(f"cpu: dtype {anchors.dtype} is not supported")
    if not _HAS_CPU_KERNELS:
        reasons.append("cpu: pixcontrast._C is not built with the mining kernels "
                       "(run `pip install --no-build-isolation -e .`)")
    return reasons


_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_TRITON_MAX_DIM = 512   # the padded D is kept whole on chip


def _triton_reasons(device: torch.device, anchors: Tensor, contrast: Tensor | None = None
                    ) -> list[str]:
    reasons = triton_reasons(device)
    if anchors.dtype not in _TRITON_DTYPES:
        reasons.append(f"triton: dtype {anchors.dtype} is not supported (supported: "
                       "float32, bfloat16, float16)")
    if anchors.shape[-1] > _TRITON_MAX_DIM:
        reasons.append(f"triton: embedding dim {anchors.shape[-1]} > {_TRITON_MAX_DIM}")
    return reasons


def _cuda_reasons(device: torch.device, *inputs) -> list[str]:
    return ["cuda: hard example mining has no CUDA kernels (the triton, cpu and dense torch "
            "backends have them)"]


# "auto": the C++ kernels on CPU tensors, Triton on CUDA tensors.
BACKENDS = OpBackends(
    "fused_pixel_contrast (mining)",
    checks={"cpu": _cpu_reasons, "triton": _triton_reasons, "cuda": _cuda_reasons,
            "torch": runs_anywhere},
    priority={"cpu": ("cpu",), "cuda": ("triton", "cuda")},
    aliases={"reference": "torch"},
    auto_hint="backend='torch' (alias 'reference') computes mining densely "
              "(memory O(N·M)).")


# --------------------------------------------------------------------------------------
# Entry point (called by fused_pixel_contrast)
# --------------------------------------------------------------------------------------

def mined_pixel_contrast(
    anchors: Tensor, labels: Tensor, contrast: Tensor | None, contrast_labels: Tensor | None,
    *, temperature: float, base_temperature: float, ignore_index: int, normalize: bool,
    include_anchors: bool, reduction: str, backend: str, mining: str | None,
    num_negatives: int | None, num_positives: int | None, semi_hard_fraction: float,
    generator: torch.Generator | None, loss: str,
) -> Tensor:
    """Mining (InfoNCE or SupCon over the selected columns); the inputs are checked (and
    cast) by fused_pixel_contrast."""
    name = BACKENDS.choose(backend, anchors.device, anchors, contrast)
    k_neg = DEFAULT_NUM_NEGATIVES if num_negatives is None else num_negatives
    k_pos = DEFAULT_NUM_POSITIVES if num_positives is None else num_positives
    semi = mining == "semi-hard"
    u = draws(anchors.shape[0], k_neg, k_pos, generator, anchors.device, semi)
    scale = temperature / base_temperature
    if name == "torch":
        return mining_reference(
            anchors, labels, contrast, contrast_labels, temperature=temperature,
            base_temperature=base_temperature, ignore_index=ignore_index,
            normalize=normalize, include_anchors=include_anchors, reduction=reduction,
            mining=mining, num_negatives=k_neg, num_positives=k_pos,
            semi_hard_fraction=float(semi_hard_fraction), u=u, loss=loss)
    self_contrast = contrast is None or include_anchors
    if contrast is None:
        contrast = anchors.new_empty((0, anchors.shape[1]))
        contrast_labels = labels.new_empty((0,), dtype=torch.long)
    args = (anchors, labels.long(), contrast, contrast_labels.long())
    need_grad = torch.is_grad_enabled() and anchors.requires_grad
    row_loss, num_pos, _, _, _ = mined_rows(
        *args, u, self_contrast, 1.0 / temperature, ignore_index, normalize, semi,
        float(semi_hard_fraction), k_neg, k_pos, loss == "supcon", need_grad, name)
    return reduce_rows(row_loss, num_pos, scale, reduction).to(anchors.dtype)


def selected_columns(
    anchors: Tensor, labels: Tensor, contrast: Tensor | None = None,
    contrast_labels: Tensor | None = None, *, mining: str = "hardest",
    num_negatives: int = DEFAULT_NUM_NEGATIVES, num_positives: int = DEFAULT_NUM_POSITIVES,
    semi_hard_fraction: float = 0.1, generator: torch.Generator | None = None,
    temperature: float = 0.1, ignore_index: int = -1, normalize: bool = True,
    include_anchors: bool = False, backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """The mined columns per anchor row: ``(negatives [N, K_neg], positives [N, K_pos])``,
    column indices in increasing order (the anchors first in self-contrast or with
    ``include_anchors``, then the contrast rows), ``-1`` padded. For inspection and tests."""
    if mining not in ("hardest", "semi-hard"):
        raise ValueError(f"mining must be 'hardest' or 'semi-hard', got {mining!r}")
    check_mining_arguments(mining, num_negatives, num_positives, semi_hard_fraction,
                           generator, "infonce", anchors.device)
    name = BACKENDS.choose(backend, anchors.device, anchors, contrast)
    semi = mining == "semi-hard"
    u = draws(anchors.shape[0], num_negatives, num_positives, generator, anchors.device, semi)
    self_contrast = contrast is None or include_anchors
    if name == "torch":
        _, neg, pos = mining_reference(
            anchors.detach(), labels, None if contrast is None else contrast.detach(),
            contrast_labels, temperature=temperature, ignore_index=ignore_index,
            normalize=normalize, include_anchors=include_anchors, mining=mining,
            num_negatives=num_negatives, num_positives=num_positives,
            semi_hard_fraction=float(semi_hard_fraction), u=u, return_selection=True)
        return _mask_to_index(neg, num_negatives), _mask_to_index(pos, num_positives)
    if contrast is None:
        contrast = anchors.new_empty((0, anchors.shape[1]))
        contrast_labels = labels.new_empty((0,), dtype=torch.long)
    sel_idx, _ = _select_kernel(name)(
        anchors.detach(), labels.long(), contrast.detach(), contrast_labels.long(),
        self_contrast, 1.0 / temperature, ignore_index, normalize, u, semi,
        float(semi_hard_fraction), num_negatives, num_positives)
    return sel_idx[:, :num_negatives], sel_idx[:, num_negatives:]


def _mask_to_index(mask: Tensor, k: int) -> Tensor:
    """``[N, M]`` bool with at most ``k`` per row -> the column indices, increasing, -1 pad."""
    m = mask.shape[1]
    cols = torch.where(mask, torch.arange(m, device=mask.device), m)
    out = cols.sort(dim=1).values[:, :k]
    if out.shape[1] < k:
        out = F.pad(out, (0, k - out.shape[1]), value=m)
    return torch.where(out == m, -1, out)

