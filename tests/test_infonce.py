"""fused_pixel_contrast: every backend against the float64 dense oracle, loss and gradients."""

from __future__ import annotations

import pytest
import torch

from pixcontrast.ops import fused_pixel_contrast, not_supported_reasons
from tests._oracle import (
    IGNORE, assert_large_norms_match, assert_lowprec_matches, assert_matches, fp32_rtol,
    make_case, oracle, run,
)

CPU_BACKENDS = ["reference", "cpu", "triton"]
MODES = ["self", "bank", "bank+anchors", "bank-grad"]


def fp32_tol(temperature: float) -> tuple[float, float]:
    # CPU and interpreter: IEEE fp32 logits, ~|s|·2^-24·sqrt(D) of error; |s| ≤ 1/τ.
    return fp32_rtol(48, temperature, tensor_cores=False), 1e-6


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("d", [20, 48])
@pytest.mark.parametrize("temperature", [0.01, 0.07, 0.1, 0.5])
def test_matches_oracle(backend, mode, d, temperature):
    case = make_case(mode, n=37, m=101, d=d, temperature=temperature)
    up = torch.randn(())
    rtol, atol = fp32_tol(temperature)
    assert_matches(run(case, backend=backend, upstream=up), oracle(case, upstream=up),
                   rtol, atol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("mode", MODES)
def test_reductions(backend, reduction, mode):
    case = make_case(mode, n=29, m=67, d=24)
    up = torch.randn(29) if reduction == "none" else torch.randn(())
    ours, ref = run(case, reduction, backend=backend, upstream=up), oracle(case, reduction, up)
    assert ours[0].shape == ref[0].shape
    assert_matches(ours, ref, *fp32_tol(0.1))
    if reduction == "none":  # ignored anchors and anchors without positives give exactly 0
        keep = (case.labels != IGNORE) & (ref[0] != 0)
        assert (ours[0][~keep] == 0).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("normalize", [True, False])
def test_large_norms(backend, mode, normalize):
    """Norms ~1e3: normalised the loss is unchanged; unnormalised the logits are huge."""
    temperature = 0.5 if normalize else 50.0
    case = make_case(mode, n=33, m=71, d=20, scale=300.0, normalize=normalize,
                     temperature=temperature)
    assert_large_norms_match(case, backend, torch.randn(()))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", ["self", "bank+anchors", "bank-grad"])
def test_tiny_temperature_is_finite(backend, mode):
    case = make_case(mode, n=31, m=53, d=48, temperature=0.01, scale=5.0)
    up = torch.randn(())
    ours = run(case, backend=backend, upstream=up)
    assert all(torch.isfinite(t).all() for t in ours if t is not None)
    assert_matches(ours, oracle(case, upstream=up), *fp32_tol(0.01))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", MODES)
def test_low_precision(backend, dtype, mode):
    if not_supported_reasons(backend, torch.empty(1, 1, dtype=dtype)):
        pytest.skip(f"{backend} does not take {dtype}")
    case = make_case(mode, n=37, m=101, d=48, dtype=dtype)
    up = torch.randn(())
    ours = run(case, backend=backend, upstream=up)
    assert ours[1].dtype == dtype
    ref = oracle(case, upstream=up)
    dense = run(case, backend="oracle", upstream=up, compute_dtype=dtype)
    assert_lowprec_matches(ours, ref, dense)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_inputs(backend):
    case = make_case("bank-grad", n=23, m=57, d=20)
    # anchors as a transposed view, contrast as a strided slice of a wider tensor
    case.anchors = case.anchors.T.contiguous().T
    wide = torch.randn(2 * case.contrast.shape[0], case.contrast.shape[1])
    wide[::2] = case.contrast
    case.contrast = wide[::2]
    assert not case.anchors.is_contiguous() and not case.contrast.is_contiguous()
    up = torch.randn(())
    assert_matches(run(case, backend=backend, upstream=up), oracle(case, upstream=up),
                   *fp32_tol(0.1))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", ["self", "bank", "bank+anchors"])
def test_nothing_counts_gives_zero_loss_and_grad(backend, mode):
    case = make_case(mode, n=17, m=29, d=20)
    case.labels = torch.full_like(case.labels, IGNORE)  # every anchor ignored
    loss, ga, _ = run(case, backend=backend)
    assert loss.item() == 0.0 and (ga == 0).all()
    # every anchor has its own class, found nowhere else: no positives anywhere
    case.labels = torch.arange(100, 117)
    loss, ga, _ = run(case, backend=backend)
    assert loss.item() == 0.0 and (ga == 0).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_single_class_has_no_negatives(backend):
    """One class only: every pair is positive, λ = −∞, each term log(1) = 0."""
    case = make_case("bank", n=19, m=31, d=20, no_positive_rows=0, ignore_frac=0.0)
    case.labels = torch.full_like(case.labels, 3)
    case.contrast_labels = torch.full_like(case.contrast_labels, 3)
    loss, ga, _ = run(case, backend=backend)
    assert loss.item() == 0.0 and torch.isfinite(ga).all() and (ga == 0).all()


def test_backends_agree_with_each_other():
    case = make_case("bank+anchors", n=41, m=97, d=48, temperature=0.07)
    up = torch.randn(())
    cpu = run(case, backend="cpu", upstream=up)
    triton = run(case, backend="triton", upstream=up)
    assert_matches(triton, cpu, *fp32_tol(0.07))


@pytest.mark.parametrize("mode", MODES)
def test_cpu_float64_gradcheck(mode):
    case = make_case(mode, n=9, m=11, d=5, classes=3, dtype=torch.float64, no_positive_rows=1)
    a = case.anchors.clone().requires_grad_()
    c = None if case.contrast is None else case.contrast.clone().requires_grad_(
        case.contrast_grad)
    inputs = (a,) if c is None or not case.contrast_grad else (a, c)

    def f(*xs):
        cc = xs[1] if len(xs) > 1 else c
        return fused_pixel_contrast(xs[0], case.labels, cc, case.contrast_labels,
                                    backend="cpu", **case.kwargs())

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("mode", MODES)
def test_reference_float64_gradcheck(mode):
    case = make_case(mode, n=9, m=11, d=5, classes=3, dtype=torch.float64, no_positive_rows=1)
    a = case.anchors.clone().requires_grad_()
    c = None if case.contrast is None else case.contrast.clone().requires_grad_(
        case.contrast_grad)

    def f(x):
        return fused_pixel_contrast(x, case.labels, c, case.contrast_labels,
                                    backend="reference", **case.kwargs())

    assert torch.autograd.gradcheck(f, (a,))


def test_anchor_gradient_scales_by_upstream():
    """The anchor gradient is computed in forward; backward must only rescale it."""
    case = make_case("bank", n=21, m=40, d=20)
    g1 = run(case, backend="cpu", upstream=torch.tensor(1.0))[1]
    g3 = run(case, backend="cpu", upstream=torch.tensor(-3.0))[1]
    torch.testing.assert_close(g3, -3.0 * g1)


def test_no_grad_forward_matches():
    case = make_case("bank", n=21, m=40, d=20)
    with torch.no_grad():
        loss = fused_pixel_contrast(case.anchors, case.labels, case.contrast,
                                    case.contrast_labels, backend="cpu", **case.kwargs())
    ref = oracle(case)[0]
    assert abs(loss.item() - ref.item()) <= 1e-5 * abs(ref.item()) + 1e-6


def test_mixed_dtypes_cast_anchors_to_contrast_dtype():
    case = make_case("bank", n=21, m=40, d=20)
    a = case.anchors.bfloat16().requires_grad_()
    loss = fused_pixel_contrast(a, case.labels, case.contrast, case.contrast_labels,
                                backend="cpu")
    loss.backward()
    assert loss.dtype == torch.float32 and a.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.uint8])
def test_ignore_index_255_and_label_dtypes(backend, label_dtype):
    """Cityscapes-style ignore label 255, labels in int32 / uint8, same loss as int64."""
    case = make_case("bank+anchors", n=29, m=61, d=20)
    ref = oracle(case, upstream=torch.ones(()))
    for t in ("labels", "contrast_labels"):
        y = getattr(case, t)
        setattr(case, t, torch.where(y == IGNORE, 255, y).to(label_dtype))
    a = case.anchors.clone().requires_grad_()
    loss = fused_pixel_contrast(a, case.labels, case.contrast, case.contrast_labels,
                                backend=backend, temperature=case.temperature,
                                include_anchors=True, ignore_index=255)
    loss.backward()
    assert_matches((loss.detach(), a.grad, None), ref, *fp32_tol(0.1))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", ["bank", "bank+anchors"])
def test_bank_may_change_in_place_after_forward(backend, mode):
    """A memory bank without gradient is enqueued right after the loss; backward is exact."""
    case = make_case(mode, n=23, m=51, d=20)
    up = torch.randn(())
    ref = oracle(case, upstream=up)
    a = case.anchors.clone().requires_grad_()
    bank, bank_labels = case.contrast.clone(), case.contrast_labels.clone()
    loss = fused_pixel_contrast(a, case.labels, bank, bank_labels, backend=backend,
                                **case.kwargs())
    bank.mul_(-3.0)
    bank_labels.add_(1)
    (loss * up).backward()
    assert_matches((loss.detach(), a.grad, None), ref, *fp32_tol(0.1))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("n,m", [(0, 7), (5, 0), (0, 0), (0, None)])
def test_empty_inputs_give_zero_loss_and_zero_gradients(backend, n, m):
    """No anchors or an empty contrast set: loss 0 and zero gradients of the right shapes
    (the finite check included: an empty tensor has no inf-norm)."""
    a = torch.randn(n, 12, requires_grad=True)
    y = torch.randint(0, 3, (n,))
    c = None if m is None else torch.randn(m, 12, requires_grad=True)
    z = None if m is None else torch.randint(0, 3, (m,))
    loss = fused_pixel_contrast(a, y, c, z, backend=backend)
    loss.backward()
    assert loss.item() == 0
    assert a.grad.shape == a.shape and torch.count_nonzero(a.grad) == 0
    if c is not None:
        assert c.grad.shape == c.shape and torch.count_nonzero(c.grad) == 0
    per_row = fused_pixel_contrast(a.detach(), y, c, z, backend=backend, reduction="none")
    assert per_row.shape == (n,)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_double_backward_is_refused_not_silently_zero(backend):
    """The fused kernels' first-order gradient is not differentiable again: asking for it
    (create_graph=True, e.g. a gradient penalty) raises instead of returning zeros; the dense
    backend gives the true second-order gradient."""
    case = make_case("bank", n=9, m=23, d=8)
    a = case.anchors.clone().requires_grad_()
    loss = fused_pixel_contrast(a, case.labels, case.contrast, case.contrast_labels,
                                backend=backend, **case.kwargs())
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(loss, a, create_graph=True)
    a64 = case.anchors.double().requires_grad_()
    dense = fused_pixel_contrast(a64, case.labels, case.contrast.double(),
                                 case.contrast_labels, backend="torch", **case.kwargs())
    (g,) = torch.autograd.grad(dense, a64, create_graph=True)
    (gg,) = torch.autograd.grad(g.pow(2).sum(), a64)
    assert torch.count_nonzero(gg) > 0
