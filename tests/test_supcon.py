"""SupCon L_out (docs/design.md §1.5, §2.8) without mining, on the InfoNCE kernels: every
backend that runs it (cpu, triton under the interpreter, and the CUDA backend's schedule and
row-pass bodies through their CPU twin ``_infonce_*_device_schedule``) against the float64
oracle, and the reference against SupCon's own log-softmax form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pixcontrast._extension import has_kernels
from pixcontrast.infonce import _columns, reduce_rows
from pixcontrast.mining import mining_reference
from pixcontrast.ops import fused_pixel_contrast
from tests._oracle import (IGNORE, assert_lowprec_matches, assert_matches,
                           assert_row_terms_close, clustered, fp32_rtol, make_case)

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


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions(backend, mode, reduction):
    case = make_case(mode, n=29, m=67, d=12)
    up = torch.randn(29, dtype=torch.float64) if reduction == "none" else torch.randn(())
    ours = _run(case, backend, reduction, up)
    ref = _run(case, "torch", reduction, up, double=True)
    assert ours[0].shape == ref[0].shape
    assert_matches(ours, ref, fp32_rtol(12, tensor_cores=False) * 2, 1e-6)


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


def _dense_in_dtype(case, upstream):
    """SupCon computed densely with its logits product in the input dtype: the judge of
    InfoNCE's low-precision test (``pixel_contrast_reference(compute_dtype=dtype)``)."""
    dtype = case.anchors.dtype
    a = case.anchors.detach().float().requires_grad_()
    c = None if case.contrast is None else case.contrast.detach().float()
    if c is not None and case.contrast_grad:
        c.requires_grad_()
    an = F.normalize(a, dim=1) if case.normalize else a
    cols, z, self_pair = _columns(an, case.labels, c, case.contrast_labels,
                                  case.contrast is None or case.include_anchors,
                                  case.normalize)
    s = (an.to(dtype) @ cols.to(dtype).T).float() / case.temperature
    valid = (case.labels != IGNORE)[:, None] & (z != IGNORE)[None, :] & ~self_pair
    pos = valid & (case.labels[:, None] == z[None, :])
    lse = torch.logsumexp(s.masked_fill(~valid, float("-inf")), 1)
    num_pos = pos.sum(1).float()
    row_loss = torch.where(pos, lse[:, None] - s, 0.0).sum(1) / num_pos.clamp(min=1)
    out = reduce_rows(row_loss, num_pos, case.temperature / 0.07, "mean").to(dtype)
    inputs = [a] + ([c] if c is not None and case.contrast_grad else [])
    grads = [g.to(dtype) for g in torch.autograd.grad((out.double() * upstream).sum(), inputs)]
    return out.detach(), grads[0], grads[1] if len(grads) > 1 else None


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(backend, dtype):
    case = make_case("bank-grad", n=31, m=77, d=16, dtype=dtype)
    up = torch.randn(())
    ours = _run(case, backend, upstream=up)
    ref = _run(case, "torch", upstream=up, double=True)
    # Judged as InfoNCE's low-precision test is: within 2× the error of the dense
    # computation in the input dtype.
    assert_lowprec_matches(ours, ref, _dense_in_dtype(case, up))


def _class_mean_bank_case(dtype):
    """A bank whose rows are their class's centre (like class-mean entries) and anchors
    spread around the same centres (noise 1): an anchor's positives share its softmax
    evenly, so each positive's gradient weight |P|·softmax_p - 1 is close to 0 while both
    of its parts are close to 1."""
    case = make_case("bank-grad", n=31, m=77, d=16, dtype=dtype)
    centers = torch.randn(8, 16, dtype=torch.float64) * 1.5
    case.anchors = clustered(case.labels, 16, centers, 1.0).to(dtype)
    case.contrast = centers[case.contrast_labels.clamp(min=0)].to(dtype)
    return case


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_positive_weights_rounded_once(backend, dtype):
    """Each positive's row-gradient weight |P|·softmax_p - 1 reaches the tensor cores as one
    16-bit number. Judged against the fp32 computation rounded to the input dtype, which
    is stricter than the test above: every tensor-core weight is rounded to the input dtype
    once, so Triton errs a few times that in bf16 (≤ 5.1× over 150 seeds; its InfoNCE ≤ 5.4×
    on the same case). When the negatives pass put the softmax part into U and the
    positives pass the -1 into V, two nearly equal weights were rounded apart: the anchor
    gradient erred a median 8.9× and up to 79× (22 of 40 seeds over 8×;
    docs/notes/infonce-triton.md)."""
    case = _class_mean_bank_case(dtype)
    up = torch.randn(())
    ours = _run(case, backend, upstream=up)
    ref = _run(case, "torch", upstream=up, double=True)
    k = 8.0 if backend == "triton" and dtype == torch.bfloat16 else 2.0
    assert_lowprec_matches(ours, ref, _run(case, "torch", upstream=up), k=k)


# --- The CUDA backend's code, on the CPU ---------------------------------------------------

OPS = torch.ops.pixcontrast
SCHEDULES = {
    "device": (lambda: OPS._infonce_forward_device_schedule,
               lambda: OPS._infonce_backward_columns_device_schedule),
    "host": (lambda: OPS.infonce_forward, lambda: OPS.infonce_backward_columns),
}
needs_device_schedule = pytest.mark.skipif(
    not has_kernels("CPU", "_infonce_forward_device_schedule"),
    reason="extension not built (or built from older sources)")


def _operands(case):
    a = case.anchors
    if case.contrast is None:
        c, z = a.new_empty(0, a.shape[1]), case.labels.new_empty(0)
    else:
        c, z = case.contrast, case.contrast_labels
    return a, case.labels, c, z, case.contrast is None or case.include_anchors


def _ops_rows(schedule, case, w):
    """Row terms and d(Σ w·row_loss)/d anchors, /d contrast through the two ops with
    supcon=True, composed as pixcontrast/infonce.py's autograd formula does."""
    fwd, bwd = (f() for f in SCHEDULES[schedule])
    a, y, c, z, self_contrast = _operands(case)
    inv_t = 1.0 / case.temperature
    row_loss, lse, sig, npos, row_grad = fwd(a, y, c, z, self_contrast, inv_t, IGNORE,
                                             case.normalize, True, False, True)
    coef = torch.where(npos > 0, w / npos.clamp(min=1), 0.0)
    gc, ga = bwd(a, y, c, z, self_contrast, inv_t, IGNORE, case.normalize, lse, sig, coef,
                 False, True)
    return (row_loss, lse, sig, npos), w[:, None] * row_grad + (ga if self_contrast else 0), gc


def _oracle_rows(case, w):
    """float64: row losses and gradients from the dense reference (τ_b = τ: no scale), L
    and |P| densely."""
    a, y, c, z, self_contrast = _operands(case)
    ad = a.detach().double().requires_grad_()
    cd = c.detach().double().requires_grad_()
    has_c = c.shape[0] > 0
    row_loss = mining_reference(ad, y, cd if has_c else None, z if has_c else None,
                                temperature=case.temperature, base_temperature=case.temperature,
                                ignore_index=IGNORE, normalize=case.normalize,
                                include_anchors=case.include_anchors and has_c,
                                reduction="none", loss="supcon")
    ga, gc = torch.autograd.grad((row_loss * w).sum(), (ad, cd), allow_unused=True)
    gc = torch.zeros_like(cd) if gc is None else gc
    with torch.no_grad():
        an = F.normalize(ad, dim=1) if case.normalize else ad
        cn = F.normalize(cd, dim=1) if case.normalize else cd
        cols, labs = ([an], [y]) if self_contrast else ([], [])
        cols.append(cn)
        labs.append(z)
        cols, labs = torch.cat(cols), torch.cat(labs)
        s = an @ cols.T / case.temperature
        valid = (y != IGNORE)[:, None] & (labs != IGNORE)[None, :]
        if self_contrast:
            valid[:, :a.shape[0]] &= ~torch.eye(a.shape[0], dtype=torch.bool)
        lse = torch.logsumexp(s.masked_fill(~valid, float("-inf")), 1)
        npos = (valid & (y[:, None] == labs[None, :])).sum(1).double()
    return (row_loss.detach(), lse, npos, npos), ga, gc


@needs_device_schedule
@pytest.mark.parametrize("schedule", ["device", "host"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("normalize", [True, False])
def test_schedules_match_oracle(schedule, mode, dtype, normalize):
    """Per-row terms (pos_sig = |P|) and both gradients, host schedule (the CPU op) and
    device schedule (the CUDA binding's loop and kernel bodies)."""
    case = make_case(mode, n=41, m=97, d=12, dtype=dtype, sort_bank=False,
                     normalize=normalize, scale=1.0 if normalize else 0.3)
    w = torch.randn(41, dtype=torch.float64)
    ours = _ops_rows(schedule, case, w.to(torch.float64 if dtype == torch.float64
                                           else torch.float32))
    rtol = 1e-10 if dtype == torch.float64 else 4e-5
    assert_row_terms_close(ours, _oracle_rows(case, w), rtol)


@needs_device_schedule
@pytest.mark.parametrize("mode", ["self", "bank+anchors"])
def test_device_schedule_over_several_chunks(mode):
    """~1900-column chunks (8 MB of fp32 logits at 1100 rows): the denominator's online
    log-sum-exp and U rescale across chunks, positives split over chunks."""
    case = make_case(mode, n=1100, m=5000, d=8, classes=7, sort_bank=False)
    w = torch.randn(1100, dtype=torch.float64)
    assert_row_terms_close(_ops_rows("device", case, w.float()), _oracle_rows(case, w), 4e-5)


@needs_device_schedule
def test_schedules_agree_and_infonce_specialisation_is_untouched():
    case = make_case("bank+anchors", n=64, m=300, d=16, sort_bank=True)
    w = torch.randn(64)
    dev = _ops_rows("device", case, w)
    host = _ops_rows("host", case, w)
    for x, h in zip(torch.utils._pytree.tree_leaves(dev), torch.utils._pytree.tree_leaves(host)):
        torch.testing.assert_close(x, h, rtol=2e-5, atol=2e-6)
    # supcon=False (the default) is InfoNCE: pos_sig is a sum of sigmoids, not |P|.
    a, y, c, z, self_contrast = _operands(case)
    out = OPS.infonce_forward(a, y, c, z, self_contrast, 10.0, IGNORE, True, False, False)
    has = out[3] > 0
    assert (out[2][has] < out[3][has]).all()


# --- Edge cases, every backend -------------------------------------------------------------

KERNEL_BACKENDS = ["cpu", "triton", "torch"]


def _only_positives_case():
    """Self-contrast plus a bank where one class has no other column: rows of class 0 see
    positives only (L = log Σ_p e^{s_p}, their loss is finite and their gradient nonzero),
    one row has no positive (contributes 0), ignored rows and columns take no part."""
    d = 6
    y = torch.tensor([0, 0, IGNORE, 0, 3, 0])
    z = torch.tensor([0, IGNORE, 0, 0])
    return torch.randn(6, d), y, torch.randn(4, d), z


def _explicit_supcon(a, y, c, z, temperature, reduction):
    """SupCon's definition, one row at a time (float64)."""
    an, cn = F.normalize(a.double(), dim=1), F.normalize(c.double(), dim=1)
    cols, labs = torch.cat([an, cn]), torch.cat([y, z])
    per_row = torch.zeros(a.shape[0], dtype=torch.float64)
    for i in range(a.shape[0]):
        if int(y[i]) == IGNORE:
            continue
        keep = [j for j in range(cols.shape[0]) if int(labs[j]) != IGNORE and j != i]
        pos = [k for k, j in enumerate(keep) if int(labs[j]) == int(y[i])]
        if pos:
            logp = torch.log_softmax(cols[keep] @ an[i] / temperature, 0)
            per_row[i] = -logp[pos].mean()
    per_row = per_row * (temperature / 0.07)
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / (per_row != 0).sum()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_rows_with_only_positives_no_positive_and_ignored(backend, reduction):
    a, y, c, z = _only_positives_case()
    a.requires_grad_()
    c.requires_grad_()
    out = fused_pixel_contrast(a, y, c, z, include_anchors=True, loss="supcon",
                               ignore_index=IGNORE, reduction=reduction, backend=backend)
    ref = _explicit_supcon(a.detach(), y, c.detach(), z, 0.1, reduction)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    if reduction == "none":
        assert out[2] == 0 and out[4] == 0  # ignored row, row without a positive
        assert (out[[0, 1, 3, 5]] > 0).all()
    ad = a.detach().double().requires_grad_()
    cd = c.detach().double().requires_grad_()
    up = torch.randn(out.shape, dtype=torch.float64)
    ga, gc = torch.autograd.grad((out.double() * up).sum(), (a, c))
    ref_ga, ref_gc = torch.autograd.grad(
        (_explicit_supcon(ad, y, cd, z, 0.1, reduction) * up).sum(), (ad, cd))
    # fp32 errs relative to the largest terms (gradients reach ~6 here), so the absolute
    # tolerance scales with the gradient (a fixed 1e-6 failed ~1 seed in 400).
    for ours_g, ref_g in ((ga, ref_ga), (gc, ref_gc)):
        torch.testing.assert_close(ours_g.double(), ref_g, rtol=1e-4,
                                   atol=1e-6 * max(1.0, float(ref_g.abs().max())))
    assert gc[1].abs().max() == 0  # the ignored column gets no gradient


# --- On a GPU: the triton and cuda backends (skipped without CUDA) ---------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("normalize", [True, False])
def test_gpu_backends_match_oracle(backend, mode, dtype, normalize):
    from pixcontrast.ops import not_supported_reasons
    reasons = not_supported_reasons(backend, torch.empty(1, 8, device="cuda"))
    if reasons:
        pytest.fail(f"backend {backend!r} must run on this GPU machine: {reasons}")
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32: 3xTF32 / IEEE SGEMM
    try:
        case = make_case(mode, n=333, m=4099, d=48, classes=19, dtype=dtype,
                         normalize=normalize, scale=1.0 if normalize else 0.3)
        case.anchors, case.labels = case.anchors.cuda(), case.labels.cuda()
        if case.contrast is not None:
            case.contrast = case.contrast.cuda()
            case.contrast_labels = case.contrast_labels.cuda()
        up = torch.randn((), dtype=torch.float64)
        ours = _run(case, backend, upstream=up.cuda())
        ref = _run(case, "torch", upstream=up.cuda(), double=True)
        if dtype == torch.float32:
            assert_matches(ours, ref, fp32_rtol(48, tensor_cores=True) * 2, 1e-6)
        else:
            assert_lowprec_matches(ours, ref, _dense_in_dtype(case, up.cuda()))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_low_precision_positive_weights_rounded_once(backend, dtype):
    """test_low_precision_positive_weights_rounded_once on the GPU, for both GPU backends.
    On cuda the split rides on the band kernel (normalize, τ >= 0.03: this case): its
    negatives pass leaves positives out of U and the band weighs them 1 - |P|·e^{s-λ} in V.
    A CPU emulation of the old two-part weights on this case erred a median 5.0e-2 (relative
    anchor-gradient error; up to 0.43), the split 6.9e-3 (docs/notes/infonce-cuda.md)."""
    case = _class_mean_bank_case(dtype)
    case.anchors, case.labels = case.anchors.cuda(), case.labels.cuda()
    case.contrast, case.contrast_labels = case.contrast.cuda(), case.contrast_labels.cuda()
    up = torch.randn((), dtype=torch.float64).cuda()
    ours = _run(case, backend, upstream=up)
    ref = _run(case, "torch", upstream=up, double=True)
    k = 8.0 if dtype == torch.bfloat16 else 2.0
    assert_lowprec_matches(ours, ref, _run(case, "torch", upstream=up), k=k)
