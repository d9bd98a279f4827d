"""SupCon L_out (docs/design.md §2.8) without mining: kernels against the float64 oracle, and
the reference against SupCon's own log-softmax form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pixcontrast.ops import fused_pixel_contrast
from tests._oracle import IGNORE, assert_lowprec_matches, assert_matches, fp32_rtol, make_case

MODES = ["self", "bank", "bank+anchors", "bank-grad"]


def _run(case, backend, reduction="mean", upstream=None, double=False, temperature=None):
    conv = (lambda t: t.detach().double()) if double else (lambda t: t.detach().clone())
    a = conv(case.anchors).requires_grad_()
    c = None if case.contrast is None else conv(case.contrast)
    if c is not None and case.contrast_grad:
        c.requires_grad_()
    out = fused_pixel_contrast(a, case.labels, c, case.contrast_labels, loss="supcon",
                               reduction=reduction, backend=backend, **case.kwargs())
    if upstream is None:
        upstream = torch.randn(out.shape, dtype=torch.float64)
    inputs = [a] + ([c] if c is not None and case.contrast_grad else [])
    grads = torch.autograd.grad((out.double() * upstream).sum(), inputs)
    return out.detach(), grads[0], grads[1] if len(grads) > 1 else None


@pytest.mark.parametrize("backend", ["cpu", "triton"])   # triton: the interpreter on CPU
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("normalize", [True, False])
def test_kernels_match_oracle(backend, mode, temperature, normalize):
    case = make_case(mode, n=37, m=101, d=20, temperature=temperature, normalize=normalize,
                     scale=1.0 if normalize else 0.3)
    up = torch.randn(())
    ours = _run(case, backend, upstream=up)
    ref = _run(case, "torch", upstream=up, double=True)
    assert_matches(ours, ref, fp32_rtol(20, temperature, tensor_cores=False) * 2, 1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_float64_reductions(mode, reduction):
    case = make_case(mode, n=29, m=67, d=12, dtype=torch.float64)
    up = torch.randn(29, dtype=torch.float64) if reduction == "none" else torch.randn(())
    ours = _run(case, "cpu", reduction, up)
    ref = _run(case, "torch", reduction, up)
    assert ours[0].shape == ref[0].shape
    assert_matches(ours, ref, 1e-11, 1e-13)


@pytest.mark.parametrize("mode", ["self", "bank", "bank+anchors"])
def test_reference_is_supcon_log_softmax(mode):
    """SupCon's own form: −mean_p log softmax_{j ≠ i, valid}(s)_p, scaled by τ/τ_b, mean over
    anchors with a positive."""
    case = make_case(mode, n=21, m=43, d=8, dtype=torch.float64)
    a = F.normalize(case.anchors, dim=1)
    cols, labs = [], []
    self_cols = 0
    if case.contrast is None or case.include_anchors:
        cols.append(a)
        labs.append(case.labels)
        self_cols = a.shape[0]
    if case.contrast is not None:
        cols.append(F.normalize(case.contrast, dim=1))
        labs.append(case.contrast_labels)
    c, z = torch.cat(cols), torch.cat(labs)
    total, rows = 0.0, 0
    for i in range(a.shape[0]):
        y = int(case.labels[i])
        if y == IGNORE:
            continue
        keep = [j for j in range(c.shape[0])
                if int(z[j]) != IGNORE and not (j < self_cols and j == i)]
        pos = [k for k, j in enumerate(keep) if int(z[j]) == y]
        if not pos:
            continue
        logp = torch.log_softmax((c[keep] @ a[i]) / case.temperature, 0)
        total += -logp[pos].mean().item()
        rows += 1
    expected = 0.1 / 0.07 * total / max(rows, 1)
    got = fused_pixel_contrast(case.anchors, case.labels, case.contrast, case.contrast_labels,
                               loss="supcon", backend="torch", **case.kwargs())
    assert abs(got.item() - expected) < 1e-12


def test_supcon_is_not_infonce():
    """The two formulas differ on a case with several positives (the test could not pass if
    the routing ignored ``loss``)."""
    case = make_case("self", n=30, d=8)
    kw = dict(ignore_index=IGNORE, backend="cpu")
    a = fused_pixel_contrast(case.anchors, case.labels, loss="supcon", **kw)
    b = fused_pixel_contrast(case.anchors, case.labels, loss="infonce", **kw)
    assert abs(a.item() - b.item()) > 1e-3


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(backend, dtype):
    case = make_case("bank-grad", n=31, m=77, d=16, dtype=dtype)
    up = torch.randn(())
    ours = _run(case, backend, upstream=up)
    ref = _run(case, "torch", upstream=up, double=True)
    # The results come back in the input dtype: judged against the dense computation's own
    # error in that dtype, as the InfoNCE tests do.
    dense = _run(case, "torch", upstream=up)
    assert_lowprec_matches(ours, ref, dense)
