"""Random cases and the float64 oracle shared by the op tests."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from pixcontrast.infonce import pixel_contrast_reference

IGNORE = -1


@dataclasses.dataclass
class Case:
    anchors: Tensor
    labels: Tensor
    contrast: Tensor | None
    contrast_labels: Tensor | None
    include_anchors: bool = False
    temperature: float = 0.1
    normalize: bool = True
    contrast_grad: bool = False

    def kwargs(self) -> dict:
        return dict(temperature=self.temperature, normalize=self.normalize,
                    include_anchors=self.include_anchors, ignore_index=IGNORE)


def clustered(labels: Tensor, d: int, centers: Tensor, scale: float) -> Tensor:
    """Embeddings near their class centre, so logits spread like a trained model's."""
    noise = torch.randn(labels.shape[0], d, dtype=torch.float64)
    return (centers[labels.clamp(min=0) % centers.shape[0]] + noise) * scale


def make_case(mode: str = "bank", n: int = 37, m: int = 101, d: int = 20, classes: int = 5,
              temperature: float = 0.1, normalize: bool = True, scale: float = 1.0,
              dtype: torch.dtype = torch.float32, no_positive_rows: int = 2,
              ignore_frac: float = 0.1, sort_bank: bool | None = None) -> Case:
    """``mode``: "self" (contrast=None), "bank", "bank+anchors" or "bank-grad"."""
    centers = torch.randn(classes + no_positive_rows, d, dtype=torch.float64) * 1.5
    labels = torch.randint(0, classes, (n,))
    # Anchors whose class appears nowhere else: no positive, must contribute exactly 0.
    k = min(no_positive_rows, n)
    labels[:k] = classes + torch.arange(k)
    labels[torch.rand(n) < ignore_frac] = IGNORE
    labels = labels[torch.randperm(n)]
    anchors = clustered(labels, d, centers, scale)
    if mode == "self":
        contrast = contrast_labels = None
    else:
        contrast_labels = torch.randint(0, classes, (m,))
        contrast_labels[torch.rand(m) < ignore_frac] = IGNORE
        if sort_bank if sort_bank is not None else bool(torch.rand(()) < 0.5):
            contrast_labels = contrast_labels.sort().values  # the memory bank's layout
        contrast = clustered(contrast_labels, d, centers, scale).to(dtype)
    return Case(anchors.to(dtype), labels, contrast, contrast_labels,
                include_anchors=mode == "bank+anchors", temperature=temperature,
                normalize=normalize, contrast_grad=mode == "bank-grad")


def run(case: Case, reduction: str = "mean", *, backend: str, upstream: Tensor | None = None,
        double: bool = False, **extra) -> tuple[Tensor, Tensor, Tensor | None]:
    """Loss, d(loss·upstream)/d anchors and /d contrast (when the case wants it)."""
    conv = (lambda t: t.detach().double()) if double else (lambda t: t.detach().clone())
    a = conv(case.anchors).requires_grad_()
    c = None if case.contrast is None else conv(case.contrast)
    if c is not None and case.contrast_grad:
        c.requires_grad_()
    fn = pixel_contrast_reference if backend == "oracle" else None
    if fn is None:
        from pixcontrast.ops import fused_pixel_contrast
        loss = fused_pixel_contrast(a, case.labels, c, case.contrast_labels,
                                    reduction=reduction, backend=backend, **case.kwargs(),
                                    **extra)
    else:
        loss = fn(a, case.labels, c, case.contrast_labels, reduction=reduction,
                  **case.kwargs(), **extra)
    if upstream is None:
        upstream = torch.randn(loss.shape, dtype=torch.float64)
    inputs = [a] + ([c] if c is not None and case.contrast_grad else [])
    grads = torch.autograd.grad((loss.double() * upstream).sum(), inputs, allow_unused=True)
    ga = grads[0] if grads[0] is not None else torch.zeros_like(a)
    gc = grads[1] if len(grads) > 1 else None
    return loss.detach(), ga, gc


def oracle(case: Case, reduction: str = "mean", upstream: Tensor | None = None, **extra):
    return run(case, reduction, backend="oracle", upstream=upstream, double=True, **extra)


def fp32_rtol(d: int, temperature: float = 0.1, *, tensor_cores: bool) -> float:
    """Relative error bound of fp32 results, from a model of how each fp32 mode computes.

    * CPU (IEEE fp32 dot products, round to nearest): 2e-5 at τ = 0.1, the bound the CPU
      tests have always used (errors grow ~√D and average out).
    * GPU with TF32 off (3xTF32 on the tensor cores, Triton and CUDA alike): the tensor
      cores accumulate fp32 by truncation, and each logit goes through 3·⌈D/8⌉ accumulation
      steps (three products of a hi/lo TF32 split, K = 8 per MMA step), each of which can
      lose up to 2⁻²³ relative, always towards zero: a biased error that grows with D
      (on the loss at D=300: 1.2e-5 emulated by tests/test_infonce_numerics.py, three
      truncating accumulations per K=8 step; 6.2e-6 in the 2026-11-29 diagnosis's own
      emulation; 1.0e-5 measured on an H200). Bound: 2e-5 + 3·⌈D/8⌉·2⁻²³.
    Logit errors scale with 1/τ, so both scale by ``max(1, 0.1/τ)``.
    """
    base = 2e-5
    if tensor_cores:
        base += 3 * math.ceil(d / 8) * 2.0 ** -23
    return base * max(1.0, 0.1 / temperature)


def max_err(x: Tensor, ref: Tensor) -> float:
    return (x.double() - ref.double()).abs().max().item() if ref.numel() else 0.0


def scale_of(ref: Tensor) -> float:
    return ref.double().abs().max().item() if ref.numel() else 0.0


def assert_matches(ours, ref, rtol: float, atol: float, what: str = "") -> None:
    """Max-abs error within ``atol + rtol·max|ref|`` for the loss and each gradient."""
    for name, x, r in zip(("loss", "grad anchors", "grad contrast"), ours, ref):
        if r is None:
            assert x is None, f"{what}{name}: got a gradient where none was expected"
            continue
        assert torch.isfinite(x).all(), f"{what}{name} is not finite"
        err, bound = max_err(x, r), atol + rtol * scale_of(r)
        assert err <= bound, f"{what}{name}: max error {err:.3g} > {bound:.3g}"


def assert_lowprec_matches(ours, ref, dense, k: float = 2.0, rtol: float = 2e-3) -> None:
    """Low precision: error at most ``k×`` the dense same-dtype error (+ a floor)."""
    for name, x, r, dn in zip(("loss", "grad anchors", "grad contrast"), ours, ref, dense):
        if r is None:
            continue
        assert torch.isfinite(x).all(), f"{name} is not finite"
        err, dense_err = max_err(x, r), max_err(dn, r)
        bound = k * dense_err + rtol * scale_of(r)
        assert err <= bound, (f"{name}: error {err:.3g} > {k}×dense {dense_err:.3g} "
                              f"+ floor {rtol * scale_of(r):.3g}")


def assert_large_norms_match(case: Case, backend: str, upstream: Tensor) -> None:
    """Inputs of norm ~1e3: normalised, the loss is that of unit vectors; unnormalised, the
    logits reach ~1e5, where fp32 itself is off by ~1e-2, so the backend is judged against
    the dense fp32 computation's own error (its gradients can be off by tens of percent)."""
    ours, ref = run(case, backend=backend, upstream=upstream), oracle(case, upstream=upstream)
    if case.normalize:
        assert_matches(ours, ref, 1e-4, 1e-6)
    else:
        dense = run(case, backend="reference", upstream=upstream)
        assert_lowprec_matches(ours, ref, dense, k=4.0, rtol=1e-4)


def assert_row_terms_close(ours, ref, rtol: float, atol: float = 1e-6) -> None:
    """A kernel schedule's ``((row_loss, lse, pos_sig, num_pos), grad_anchors,
    grad_contrast)`` against the float64 oracle's: the same infinities in the same places,
    every finite value within ``atol + rtol·scale``."""
    (terms, ga, gc), (ref_terms, ref_ga, ref_gc) = ours, ref
    for name, x, r in zip(("row_loss", "lse", "pos_sig", "num_pos"), terms, ref_terms):
        finite = torch.isfinite(r)
        assert torch.equal(torch.isfinite(x), finite), f"{name}: ±inf where the oracle has none"
        assert (x[~finite] == r[~finite].to(x.dtype)).all(), f"{name}: wrong infinities"
        err = (x.double()[finite] - r[finite]).abs().max().item() if finite.any() else 0.0
        scale = r[finite].abs().max().item() if finite.any() else 0.0
        assert err <= atol + rtol * scale, f"{name}: error {err:.3g}, scale {scale:.3g}"
    for name, x, r in (("grad anchors", ga, ref_ga), ("grad contrast", gc, ref_gc)):
        err = (x.double() - r).abs().max().item() if r.numel() else 0.0
        scale = r.abs().max().item() if r.numel() else 0.0
        assert err <= atol + rtol * scale, f"{name}: error {err:.3g}, scale {scale:.3g}"
