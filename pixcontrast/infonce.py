"""torch.library wiring of the fused InfoNCE kernels: fake (meta) kernels and autograd.

Two families of ops share one contract (csrc/ops.cpp documents it):

* ``pixcontrast::infonce_forward`` / ``infonce_backward_columns``: C++ schemas whose CPU
  (csrc/cpu/infonce.cpp) and CUDA (csrc/cuda/) kernels the dispatcher picks by device.
* ``pixcontrast::infonce_forward_triton`` / ``infonce_backward_columns_triton``: the
  Triton kernels of kernels/infonce.py, as Python custom ops (CUDA tensors, or CPU tensors
  under ``TRITON_INTERPRET=1``).

Each forward returns per-row terms; the loss is reduced from ``row_loss`` in Python. The
anchors' row gradient is computed in the forward pass (one pass over the contrast set), so
backward only scales it by the upstream gradient; the column gradient (self-contrast, or a
contrast set that requires grad) is one recompute pass in backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pixcontrast._backends import cuda_matmul_allows_tf32
from pixcontrast._extension import extension_available

__all__ = ["forward_op"]

_ROW_OUTPUTS = 5  # row_loss, lse, pos_sig, num_pos, row_grad


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
    _ctx, _bw = _make_autograd(
        lambda *a: torch.ops.pixcontrast.infonce_backward_columns(*a), n_extra=0)
    torch.library.register_autograd("pixcontrast::infonce_forward", _bw, setup_context=_ctx)


# --- Triton ops --------------------------------------------------------------------------

@torch.library.custom_op("pixcontrast::infonce_forward_triton", mutates_args=())
def infonce_forward_triton(
    anchors: Tensor, labels: Tensor, contrast: Tensor, contrast_labels: Tensor,
    self_contrast: bool, inv_temperature: float, ignore_index: int, normalize: bool,
    need_grad: bool, allow_tf32: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    from pixcontrast.kernels.infonce import infonce_forward

    return infonce_forward(anchors, labels, contrast, contrast_labels, self_contrast,
                           inv_temperature, ignore_index, normalize, need_grad,
                           allow_tf32=allow_tf32)


@torch.library.custom_op("pixcontrast::infonce_backward_columns_triton", mutates_args=())
def infonce_backward_columns_triton(
    anchors: Tensor, labels: Tensor, contrast: Tensor, contrast_labels: Tensor,
    self_contrast: bool, inv_temperature: float, ignore_index: int, normalize: bool,
    lse: Tensor, pos_sig: Tensor, row_coef: Tensor, allow_tf32: bool,
) -> tuple[Tensor, Tensor]:
    from pixcontrast.kernels.infonce import infonce_backward_columns

    return infonce_backward_columns(anchors, labels, contrast, contrast_labels, self_contrast,
                                    inv_temperature, ignore_index, normalize, lse, pos_sig,
                                    row_coef, allow_tf32=allow_tf32)


infonce_forward_triton.register_fake(_fake_forward)
infonce_backward_columns_triton.register_fake(_fake_backward_columns)
_ctx, _bw = _make_autograd(infonce_backward_columns_triton, n_extra=1)
infonce_forward_triton.register_autograd(_bw, setup_context=_ctx)


def forward_op(backend: str) -> Callable[..., tuple[Tensor, ...]]:
    """The row-pass op of a kernel backend (``"cpu"``/``"cuda"`` share the C++ schema)."""
    if backend == "triton":
        # The fp32 mode is read here, once, and saved for backward as an op argument.
        return lambda *args: infonce_forward_triton(*args, cuda_matmul_allows_tf32())
    return torch.ops.pixcontrast.infonce_forward

