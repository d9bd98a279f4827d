"""Public functional API: ``fused_pixel_contrast`` and backend choice.

Backends:

=============  ==========================================================================
``cpu``        C++ kernels (csrc/cpu/infonce.cpp), tiled over the contrast set, fp32/fp64
               accumulation; CPU tensors.
``triton``     Triton kernels (kernels/infonce.py), split over the contrast set; CUDA
               tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (slow: for testing).
``cuda``       CUDA C++ kernels (csrc/cuda/infonce.cu): WMMA tensor-core tiles, split over
               the contrast set; CUDA tensors, when the extension was built with them.
``reference``  Dense plain PyTorch that materialises the ``[N, M]`` logits (the oracle's
               twin, pixcontrast/reference.py).
=============  ==========================================================================

``backend="auto"`` walks a priority list for the inputs' device and raises with every
backend's reason when none fits; a backend named explicitly never falls back.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from pixcontrast._backends import cuda_reasons, missing_cuda_kernels, triton_reasons
from pixcontrast._extension import has_kernels
from pixcontrast.infonce import forward_op
from pixcontrast.reference import pixel_contrast_reference, reduce_rows
from pixcontrast.sampling import sample_anchors

__all__ = ["fused_pixel_contrast", "sample_anchors", "not_supported_reasons", "BACKENDS"]

BACKENDS = ("cpu", "triton", "cuda", "reference")
REDUCTIONS = ("mean", "sum", "none")
# Fastest first. On CUDA this order is provisional until the GPU benchmarks rank them.
_PRIORITY = {"cpu": ("cpu",), "cuda": ("triton", "cuda")}
_KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.bfloat16, torch.float16, torch.float64),
    "triton": (torch.float32, torch.bfloat16, torch.float16),
    "cuda": (torch.float32, torch.bfloat16, torch.float16),
}
_MAX_DIM = {"triton": 512, "cuda": 512}  # the padded D is kept whole on chip


# Facts about this process, read once at import: constants for torch.compile to trace.
_HAS_CPU_KERNELS = has_kernels("CPU")
_MISSING_CUDA = missing_cuda_kernels(("infonce_forward", "infonce_backward_columns"))


def not_supported_reasons(backend: str, anchors: Tensor, contrast: Tensor | None = None
                          ) -> list[str]:
    """Why ``backend`` cannot run these inputs (empty list: it can)."""
    if backend == "reference":
        return []
    reasons = []
    dev = anchors.device.type
    if anchors.dtype not in _KERNEL_DTYPES[backend]:
        names = ", ".join(str(t).removeprefix("torch.") for t in _KERNEL_DTYPES[backend])
        reasons.append(f"{backend}: dtype {anchors.dtype} is not supported (supported: {names})")
    if backend == "cpu":
        if dev != "cpu":
            reasons.append(f"cpu: the inputs are on {anchors.device}, not the CPU")
        if not _HAS_CPU_KERNELS:
            reasons.append("cpu: pixcontrast._C is not built with its CPU kernels "
                           "(run `pip install --no-build-isolation -e .`)")
    elif backend == "cuda":
        reasons += cuda_reasons(anchors.device, _MISSING_CUDA)
    elif backend == "triton":
        reasons += triton_reasons(anchors.device)
    if backend in _MAX_DIM and anchors.shape[-1] > _MAX_DIM[backend]:
        reasons.append(f"{backend}: embedding dim {anchors.shape[-1]} > {_MAX_DIM[backend]}")
    return reasons


def _choose_backend(backend: str, anchors: Tensor, contrast: Tensor | None) -> str:
    if backend != "auto":
        reasons = not_supported_reasons(backend, anchors, contrast)
        if reasons:
            raise RuntimeError(f"backend={backend!r} cannot run these inputs: "
                               + "; ".join(reasons))
        return backend
    candidates = _PRIORITY.get(anchors.device.type, ())
    all_reasons = []
    for name in candidates:
        reasons = not_supported_reasons(name, anchors, contrast)
        if not reasons:
            return name
        all_reasons += reasons
    if not candidates:
        all_reasons.append(f"no fused backend for device type {anchors.device.type!r}")
    raise RuntimeError("backend='auto' found no backend for these inputs: "
                       + "; ".join(all_reasons) + ". backend='reference' computes the loss "
                       "densely (memory O(N·M)).")


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
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")


def _assert_finite(name: str, x: Tensor) -> None:
    # Sync-free: raises at once on CPU; on CUDA a device-side assert, so a NaN in the
    # inputs stops the step instead of silently poisoning the weights. The max-abs norm is
    # one reduction that propagates NaN and Inf; torch.isfinite(x).all() would allocate
    # ~1.7× the bank in temporaries (325 MB at the paper's bank size).
    peak = torch.linalg.vector_norm(x.detach(), ord=math.inf)
    torch._assert_async(torch.isfinite(peak), f"pixcontrast: {name} contains NaN or Inf")


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
) -> Tensor:
    """Per-positive pixel InfoNCE of Wang et al. (ICCV 2021), without the ``N × M`` logits.

    Args:
        anchors: ``[N, D]`` float32 / bfloat16 / float16 (float64 on cpu and reference).
        labels: ``[N]`` integer class of each anchor; ``ignore_index`` rows take no part.
        contrast: ``[M, D]`` contrast set (e.g. ``MemoryBank.contrast()[0]``), or ``None``
            for self-contrast among the anchors (the pair ``i == i`` excluded). Cast to the
            anchors' dtype if it differs.
        contrast_labels: ``[M]`` integer, required with ``contrast``.
        temperature: τ > 0. ``base_temperature``: τ_b > 0; the loss is scaled by τ/τ_b.
        normalize: L2-normalise anchors and contrast rows inside the kernels (the gradient
            goes through the normalisation).
        include_anchors: with ``contrast``, contrast against the anchors (self excluded)
            and the contrast rows.
        reduction: ``"mean"`` over anchors with at least one positive (0 when there is
            none), ``"sum"``, or ``"none"`` for the ``[N]`` per-anchor losses (0 for ignored
            anchors and anchors without positives).
        backend: ``"auto"``, ``"cpu"``, ``"triton"``, ``"cuda"`` or ``"reference"``.
        check_finite: report NaN/Inf in the inputs (one extra read of each input, no
            host synchronisation).

    Returns:
        Scalar loss (``[N]`` for ``reduction="none"``) in the anchors' dtype; accumulation
        is float32 (float64 for float64 inputs).

    Equivalent PyTorch (dense; ``s = normalize(a) @ normalize(c).T / τ``)::

        pos = (y[:, None] == z[None, :]) & valid;  neg = (y[:, None] != z[None, :]) & valid
        lse = logsumexp(s.masked_fill(~neg, -inf), 1)
        l_i = (softplus(lse[:, None] - s) * pos).sum(1) / pos.sum(1)
        loss = τ / τ_b * l_i[pos.any(1)].mean()
    """
    _check_inputs(anchors, labels, contrast, contrast_labels, temperature, base_temperature,
                  ignore_index, reduction, backend)
    if contrast is not None and contrast.dtype != anchors.dtype:
        anchors = anchors.to(contrast.dtype)
    name = _choose_backend(backend, anchors, contrast)
    if check_finite:
        _assert_finite("anchors", anchors)
        if contrast is not None:
            _assert_finite("contrast", contrast)
    if name == "reference":
        return pixel_contrast_reference(
            anchors, labels, contrast, contrast_labels, temperature=temperature,
            base_temperature=base_temperature, ignore_index=ignore_index,
            normalize=normalize, include_anchors=include_anchors, reduction=reduction)

    self_contrast = contrast is None or include_anchors
    if contrast is None:
        contrast = anchors.new_empty((0, anchors.shape[1]))
        contrast_labels = labels.new_empty((0,), dtype=torch.long)
    need_grad = torch.is_grad_enabled() and anchors.requires_grad
    op: Callable[..., tuple[Tensor, ...]] = forward_op(name)
    row_loss, _, _, num_pos, _ = op(
        anchors, labels.long(), contrast, contrast_labels.long(), self_contrast,
        1.0 / temperature, ignore_index, normalize, need_grad)
    loss = reduce_rows(row_loss, num_pos, temperature / base_temperature, reduction)
    return loss.to(anchors.dtype)
