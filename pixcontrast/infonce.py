"""The per-positive InfoNCE op of Wang et al. (ICCV 2021), all of it in Python.

Layers (docs/design.md §1 for the math, §6 for each backend's algorithm):

* ``fused_pixel_contrast``: the public op. Argument checks that name the argument, the
  backend choice (``BACKENDS``: "torch" — the dense reference, alias "reference" —,
  "cpu", "triton", "cuda"; their capabilities are declared once, below), the finite
  check, the reduction.
* The torch.library wiring of the fused kernels: two families of ops share one contract
  (csrc/ops.cpp documents it), ``pixcontrast::infonce_forward`` /
  ``infonce_backward_columns`` (C++ schemas whose CPU, csrc/cpu/infonce.cpp, and CUDA,
  csrc/cuda/, kernels the dispatcher picks by device) and
  ``pixcontrast::infonce_forward_triton`` / ``infonce_backward_columns_triton`` (the Triton
  kernels of kernels/infonce.py as Python custom ops), with fake kernels and one autograd
  formula for all. Each forward returns per-row terms; the anchors' row gradient is
  computed in the forward pass, so backward only scales it by the upstream gradient; the
  column gradient (self-contrast, or a contrast set that requires grad) is one recompute
  pass in backward. The fp32 mode (``allow_tf32``) is an argument of every op, read from
  torch's setting once per call and saved for backward; so is ``supcon`` (SupCon's L_out on
  the same kernels, docs/design.md §1.5: the log-sum-exp over every valid column, positive
  weight 1), the last argument of every op.
* The dense reference (the "torch" backend and the test oracle's twin): ``reference_row_terms``
  and ``pixel_contrast_reference`` materialise the ``[N, M]`` logits on purpose, kept short
  so that they are obviously right; ``reduce_rows`` is the reduction every backend shares.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from pixcontrast._backends import (
    OpBackends, cuda_matmul_allows_tf32, cuda_reasons, loss_mode, loss_workload,
    measured_order, missing_cuda_kernels, runs_anywhere, triton_reasons,
)
from pixcontrast._checks import assert_finite
from pixcontrast._extension import extension_available, has_kernels

__all__ = ["fused_pixel_contrast", "not_supported_reasons", "BACKENDS",
           "pixel_contrast_reference", "reference_row_terms", "reduce_rows"]

REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------------------
# The dense reference ("torch" backend; the oracle's twin)
# --------------------------------------------------------------------------------------

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
    if contrast is not None:  # an empty one too: its gradient is then [0, D] zeros
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
    """Dense per-positive InfoNCE (docs/design.md §1). Materialises ``[N, M]`` logits.

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


# --------------------------------------------------------------------------------------
# torch.library wiring of the fused kernels: fake kernels and the one autograd formula
# --------------------------------------------------------------------------------------

def _acc_dtype(anchors: Tensor) -> torch.dtype:
    return torch.float64 if anchors.dtype == torch.float64 else torch.float32


def _fake_forward(anchors, labels, contrast, contrast_labels, self_contrast, inv_temperature,
                  ignore_index, normalize, need_grad, *rest):
    n, d = anchors.shape
    acc = _acc_dtype(anchors)
    rows = [anchors.new_empty((n,), dtype=acc) for _ in range(4)]
    row_grad = anchors.new_empty((n, d) if need_grad else (0, d), dtype=acc)
    return (*rows, row_grad)


def _fake_backward_columns(anchors, labels, contrast, contrast_labels, self_contrast,
                           inv_temperature, ignore_index, normalize, lse, pos_sig, row_coef,
                           *rest):
    acc = _acc_dtype(anchors)
    d = anchors.shape[1]
    n_cols = anchors.shape[0] if self_contrast else 0
    return (contrast.new_empty((contrast.shape[0], d), dtype=acc),
            anchors.new_empty((n_cols, d), dtype=acc))


def _make_autograd(backward_columns: Callable[..., tuple[Tensor, Tensor]], n_extra: int):
    """Autograd formula shared by every backend; ``n_extra`` trailing non-tensor args."""

    def setup_context(ctx, inputs, output):
        (anchors, labels, contrast, contrast_labels, self_contrast, inv_temperature,
         ignore_index, normalize, need_grad, *extra) = inputs
        _, lse, pos_sig, num_pos, row_grad = output
        if not ctx.needs_input_grad[2]:
            # A contrast set without gradient (the memory bank) is not read in backward:
            # its part of the anchor gradient is already in row_grad. Not saving it lets
            # the caller update the bank in place right after the forward.
            contrast = contrast.new_empty((0, contrast.shape[1]))
            contrast_labels = contrast_labels.new_empty((0,))
        ctx.save_for_backward(anchors, labels, contrast, contrast_labels, lse, pos_sig,
                              num_pos, row_grad)
        ctx.args = (self_contrast, inv_temperature, ignore_index, normalize, need_grad, extra)

    def backward(ctx, grad_row_loss, *unused):
        if torch.is_grad_enabled():
            # create_graph=True (e.g. a gradient penalty): the gradients below come from
            # per-row terms saved in the forward, not from a differentiable formula, so
            # their own gradient would silently be 0. Refuse instead.
            raise RuntimeError(
                "pixcontrast: fused_pixel_contrast does not support double backward "
                "(backward with create_graph=True) through its fused kernels; use "
                "backend='torch' (the dense reference) for higher-order gradients")
        (anchors, labels, contrast, contrast_labels, lse, pos_sig, num_pos,
         row_grad) = ctx.saved_tensors
        self_contrast, inv_temperature, ignore_index, normalize, need_grad, extra = ctx.args
        want_anchors, want_contrast = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        r = grad_row_loss.to(lse.dtype)
        grad_anchors = grad_contrast = None
        if want_anchors:
            if not need_grad:
                raise RuntimeError(
                    "pixcontrast: the forward pass ran with need_grad=False (anchors did not "
                    "require grad or grad mode was off) but a gradient was requested")
            grad_anchors = r[:, None] * row_grad
        if want_contrast or (want_anchors and self_contrast):
            row_coef = torch.where(num_pos > 0, r / num_pos.clamp(min=1), 0.0)
            grad_cols, grad_anchor_cols = backward_columns(
                anchors, labels, contrast, contrast_labels, self_contrast, inv_temperature,
                ignore_index, normalize, lse, pos_sig, row_coef, *extra)
            if want_anchors and self_contrast:
                grad_anchors = grad_anchors + grad_anchor_cols
            if want_contrast:
                grad_contrast = grad_cols.to(contrast.dtype)
        if grad_anchors is not None:
            grad_anchors = grad_anchors.to(anchors.dtype)
        return (grad_anchors, None, grad_contrast, None, None, None, None, None, None,
                *([None] * n_extra))

    return setup_context, backward


# --- C++ ops (CPU now, CUDA when built) ------------------------------------------------

if extension_available():
    torch.library.register_fake("pixcontrast::infonce_forward")(_fake_forward)
    torch.library.register_fake("pixcontrast::infonce_backward_columns")(
        _fake_backward_columns)
    _ctx, _bw = _make_autograd(  # extra: (allow_tf32, supcon), both read by backward
        lambda *a: torch.ops.pixcontrast.infonce_backward_columns(*a), n_extra=2)
    torch.library.register_autograd("pixcontrast::infonce_forward", _bw, setup_context=_ctx)


# --- Triton ops --------------------------------------------------------------------------

@torch.library.custom_op("pixcontrast::infonce_forward_triton", mutates_args=())
def infonce_forward_triton(
    anchors: Tensor, labels: Tensor, contrast: Tensor, contrast_labels: Tensor,
    self_contrast: bool, inv_temperature: float, ignore_index: int, normalize: bool,
    need_grad: bool, allow_tf32: bool, check_finite: bool = False, supcon: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    from pixcontrast.kernels.infonce import infonce_forward

    # check_finite: the kernels' prep reads every input once anyway (its norms) and checks
    # it in that read, so the public op skips its own reads for this backend.
    return infonce_forward(anchors, labels, contrast, contrast_labels, self_contrast,
                           inv_temperature, ignore_index, normalize, need_grad,
                           allow_tf32=allow_tf32, check_finite=check_finite, supcon=supcon)


@torch.library.custom_op("pixcontrast::infonce_backward_columns_triton", mutates_args=())
def infonce_backward_columns_triton(
    anchors: Tensor, labels: Tensor, contrast: Tensor, contrast_labels: Tensor,
    self_contrast: bool, inv_temperature: float, ignore_index: int, normalize: bool,
    lse: Tensor, pos_sig: Tensor, row_coef: Tensor, allow_tf32: bool, supcon: bool = False,
) -> tuple[Tensor, Tensor]:
    from pixcontrast.kernels.infonce import infonce_backward_columns

    return infonce_backward_columns(anchors, labels, contrast, contrast_labels, self_contrast,
                                    inv_temperature, ignore_index, normalize, lse, pos_sig,
                                    row_coef, allow_tf32=allow_tf32, supcon=supcon)


infonce_forward_triton.register_fake(_fake_forward)
infonce_backward_columns_triton.register_fake(_fake_backward_columns)
_ctx, _bw = _make_autograd(  # extra: (allow_tf32, check_finite, supcon); no input re-checked
    lambda *args: infonce_backward_columns_triton(*args[:-2], args[-1]), n_extra=3)
infonce_forward_triton.register_autograd(_bw, setup_context=_ctx)


# --------------------------------------------------------------------------------------
# Backends: capabilities declared once, "auto" from measured speed
# --------------------------------------------------------------------------------------

# Facts about this process, read once at import: constants for torch.compile to trace.
_HAS_CPU_KERNELS = has_kernels("CPU")
_MISSING_CUDA = missing_cuda_kernels(("infonce_forward", "infonce_backward_columns"))
_DTYPES = {
    "cpu": (torch.float32, torch.bfloat16, torch.float16, torch.float64),
    "triton": (torch.float32, torch.bfloat16, torch.float16),
    "cuda": (torch.float32, torch.bfloat16, torch.float16),
}
# Triton keeps the padded D whole on chip (kernels/infonce.py guards it again, as kernels
# must); the CUDA backend's products are cuBLAS GEMMs and its row passes loop over D.
_MAX_DIM = {"triton": 512}


def _kernel_reasons(name: str):
    def check(device: torch.device, anchors: Tensor, contrast: Tensor | None = None
              ) -> list[str]:
        reasons = []
        if anchors.dtype not in _DTYPES[name]:
            names = ", ".join(str(t).removeprefix("torch.") for t in _DTYPES[name])
            reasons.append(f"{name}: dtype {anchors.dtype} is not supported "
                           f"(supported: {names})")
        if name == "cpu":
            if device.type != "cpu":
                reasons.append(f"cpu: the inputs are on {device}, not the CPU")
            if not _HAS_CPU_KERNELS:
                reasons.append("cpu: pixcontrast._C is not built with its CPU kernels "
                               "(run `pip install --no-build-isolation -e .`)")
        elif name == "cuda":
            reasons += cuda_reasons(device, _MISSING_CUDA)
        else:
            reasons += triton_reasons(device)
        if name in _MAX_DIM and anchors.shape[-1] > _MAX_DIM[name]:
            reasons.append(f"{name}: embedding dim {anchors.shape[-1]} > {_MAX_DIM[name]}")
        return reasons
    return check


def _cuda_rank(device: torch.device, anchors: Tensor, contrast: Tensor | None = None
               ) -> tuple[str, ...] | None:
    """"auto" on CUDA: the fused backends fastest first as measured for the nearest
    workload and the mode (the table in pixcontrast/_backends.py, measured_order)."""
    if device.type != "cuda":
        return None
    return measured_order(loss_workload(anchors.shape[0]),
                          loss_mode(anchors.dtype, cuda_matmul_allows_tf32()))


# "auto" never picks the dense "torch" backend (memory O(N·M)).
BACKENDS = OpBackends(
    "fused_pixel_contrast",
    checks={"cpu": _kernel_reasons("cpu"), "triton": _kernel_reasons("triton"),
            "cuda": _kernel_reasons("cuda"), "torch": runs_anywhere},
    priority={"cpu": ("cpu",), "cuda": ("triton", "cuda")},
    rank=_cuda_rank,
    aliases={"reference": "torch"},
    auto_hint="backend='torch' (alias 'reference') computes the loss densely "
              "(memory O(N·M)).")


def not_supported_reasons(backend: str, anchors: Tensor, contrast: Tensor | None = None
                          ) -> list[str]:
    """Why ``backend`` cannot run these inputs (empty list: it can)."""
    return BACKENDS.reasons(backend, anchors.device, anchors, contrast)


def _forward_op(backend: str):
    """The row-pass op of a kernel backend ("cpu"/"cuda" share the C++ schema)."""
    if backend == "triton":
        return infonce_forward_triton
    return torch.ops.pixcontrast.infonce_forward


# --------------------------------------------------------------------------------------
# The public op
# --------------------------------------------------------------------------------------

def _check_features(name: str, x: object, n_name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [{n_name}, D], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float32, bfloat16, float16 "
                        f"or float64), got {x.dtype}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have a non-zero embedding dim D, got {tuple(x.shape)}")


def _check_labels(name: str, y: object, n: int, feat_name: str, n_name: str) -> None:
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got {y.dtype}")
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must be 1-D [{n_name}] with {n_name}={n} (the rows of "
                         f"{feat_name}), got shape {tuple(y.shape)}")


def _check_scalar(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return float(value)


def _check_inputs(anchors, labels, contrast, contrast_labels, temperature, base_temperature,
                  ignore_index, reduction, backend) -> None:
    _check_features("anchors", anchors, "N")
    _check_labels("labels", labels, anchors.shape[0], "anchors", "N")
    if contrast is None:
        if contrast_labels is not None:
            raise ValueError("contrast_labels was given without contrast")
    else:
        _check_features("contrast", contrast, "M")
        if contrast_labels is None:
            raise ValueError("contrast_labels is required when contrast is given")
        _check_labels("contrast_labels", contrast_labels, contrast.shape[0], "contrast", "M")
        if contrast.shape[1] != anchors.shape[1]:
            raise ValueError(f"contrast has embedding dim D={contrast.shape[1]} but anchors "
                             f"have D={anchors.shape[1]}")
    for name, t in (("labels", labels), ("contrast", contrast),
                    ("contrast_labels", contrast_labels)):
        if t is not None and t.device != anchors.device:
            raise ValueError(f"{name} is on {t.device} but anchors are on {anchors.device}; "
                             "all tensors must be on one device")
    _check_scalar("temperature", temperature)
    _check_scalar("base_temperature", base_temperature)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    BACKENDS.validate_name(backend)


def fused_pixel_contrast(
    anchors: Tensor,
    labels: Tensor,
    contrast: Tensor | None = None,
    contrast_labels: Tensor | None = None,
    *,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    ignore_index: int = -1,
    normalize: bool = True,
    include_anchors: bool = False,
    reduction: str = "mean",
    backend: str = "auto",
    check_finite: bool = True,
    mining: str | None = None,
    num_negatives: int | None = None,
    num_positives: int | None = None,
    semi_hard_fraction: float = 0.1,
    generator: torch.Generator | None = None,
    loss: str = "infonce",
) -> Tensor:
    """Per-positive pixel InfoNCE of Wang et al. (ICCV 2021), without the ``N × M`` logits.

    Args:
        anchors: ``[N, D]`` float32 / bfloat16 / float16 (float64 on cpu and reference).
        labels: ``[N]`` integer class of each anchor; ``ignore_index`` rows take no part.
        contrast: ``[M, D]`` contrast set (e.g. ``MemoryBank.contrast()[0]``), or ``None``
            for self-contrast among the anchors (the pair ``i == i`` excluded). When the
            dtypes differ the anchors are cast to the contrast's dtype (the bank, often the
            larger, is never copied).
        contrast_labels: ``[M]`` integer, required with ``contrast``.
        temperature: τ > 0. ``base_temperature``: τ_b > 0; the loss is scaled by τ/τ_b.
        normalize: L2-normalise anchors and contrast rows inside the kernels (the gradient
            goes through the normalisation).
        include_anchors: with ``contrast``, contrast against the anchors (self excluded)
            and the contrast rows.
        reduction: ``"mean"`` over anchors with at least one positive (0 when there is
            none), ``"sum"``, or ``"none"`` for the ``[N]`` per-anchor losses (0 for ignored
            anchors and anchors without positives).
        backend: ``"auto"``, ``"cpu"``, ``"triton"``, ``"cuda"`` or ``"torch"`` (the dense
            reference; ``"reference"`` is the same).
        check_finite: report NaN/Inf in the inputs (one extra read of each input; none
            with "triton", whose norm pass checks them; no host synchronisation).
        mining: ``None`` (every valid column), ``"hardest"`` (per anchor the
            ``num_negatives`` most similar negatives and the ``num_positives`` least similar
            positives; ties by lowest column index) or ``"semi-hard"`` (that many drawn
            uniformly among the top ``semi_hard_fraction`` of each ordered set, at least
            ``num_*`` of it). docs/design.md §2.8; backends "cpu", "triton", "torch".
        num_negatives, num_positives: K per anchor with ``mining`` (default 1024 and 256).
        semi_hard_fraction: the semi-hard pool's share of each set, in (0, 1].
        generator: the semi-hard draw's generator (reproducible; ``None``: the global one).
        loss: ``"infonce"`` (above) or ``"supcon"``: SupCon's L_out,
            ``ℓ_i = −mean_p [s_ip − log Σ_{j≠i valid} e^{s_ij}]`` (over the selected
            columns with ``mining``). SupCon without mining runs on the InfoNCE kernels
            (every backend; docs/design.md §1.5); mining runs the kernels of
            pixcontrast/mining.py (backends "cpu", "triton", "torch").

    Returns:
        Scalar loss (``[N]`` for ``reduction="none"``) in the anchors' dtype (the
        contrast's, when the anchors were cast to it); accumulation is float32 (float64 for
        float64 inputs).

    Equivalent PyTorch (dense; ``s = normalize(a) @ normalize(c).T / τ``)::

        pos = (y[:, None] == z[None, :]) & valid;  neg = (y[:, None] != z[None, :]) & valid
        lse = logsumexp(s.masked_fill(~neg, -inf), 1)
        l_i = (softplus(lse[:, None] - s) * pos).sum(1) / pos.sum(1)
        loss = τ / τ_b * l_i[pos.any(1)].mean()
    """
    _check_inputs(anchors, labels, contrast, contrast_labels, temperature, base_temperature,
                  ignore_index, reduction, backend)
    from pixcontrast import mining as _mining  # imports this module: not at the top

    _mining.check_mining_arguments(mining, num_negatives, num_positives, semi_hard_fraction,
                                   generator, loss, anchors.device)
    if contrast is not None and contrast.dtype != anchors.dtype:
        anchors = anchors.to(contrast.dtype)
    if mining is not None:
        if check_finite:
            assert_finite(anchors, "pixcontrast: anchors contains NaN or Inf")
            if contrast is not None:
                assert_finite(contrast, "pixcontrast: contrast contains NaN or Inf")
        return _mining.mined_pixel_contrast(
            anchors, labels, contrast, contrast_labels, temperature=temperature,
            base_temperature=base_temperature, ignore_index=ignore_index,
            normalize=normalize, include_anchors=include_anchors, reduction=reduction,
            backend=backend, mining=mining, num_negatives=num_negatives,
            num_positives=num_positives, semi_hard_fraction=semi_hard_fraction,
            generator=generator, loss=loss)
    name = BACKENDS.choose(backend, anchors.device, anchors, contrast)
    if check_finite and name != "triton":  # Triton checks in its prep's read
        assert_finite(anchors, "pixcontrast: anchors contains NaN or Inf")
        if contrast is not None:
            assert_finite(contrast, "pixcontrast: contrast contains NaN or Inf")
    supcon = loss == "supcon"
    if name == "torch":
        reference = _mining.mining_reference if supcon else pixel_contrast_reference
        return reference(
            anchors, labels, contrast, contrast_labels, temperature=temperature,
            base_temperature=base_temperature, ignore_index=ignore_index,
            normalize=normalize, include_anchors=include_anchors, reduction=reduction,
            **({"loss": "supcon"} if supcon else {}))

    self_contrast = contrast is None or include_anchors
    if contrast is None:
        contrast = anchors.new_empty((0, anchors.shape[1]))
        contrast_labels = labels.new_empty((0,), dtype=torch.long)
    need_grad = torch.is_grad_enabled() and anchors.requires_grad
    row_loss, _, _, num_pos, _ = _forward_op(name)(
        anchors, labels.long(), contrast, contrast_labels.long(), self_contrast,
        1.0 / temperature, ignore_index, normalize, need_grad, cuda_matmul_allows_tf32(),
        *((check_finite,) if name == "triton" else ()), supcon)
    out = reduce_rows(row_loss, num_pos, temperature / base_temperature, reduction)
    return out.to(anchors.dtype)
