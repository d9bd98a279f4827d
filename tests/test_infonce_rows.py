"""The chunk loop and row math the CUDA backend runs, tested on the CPU.

``pixcontrast::_infonce_forward_device_schedule`` and ``_infonce_backward_columns_device_schedule``
run csrc/common/chunk_loop.h with the CUDA binding's schedule (every row and column in the
caller's order, masks only, the positives pass over every chunk, or on the fast path
(normalised, τ ≥ 0.03, fp32) the band kernel's schedule of csrc/common/infonce_band.h) and
the bodies of the CUDA row-pass kernels (csrc/common/infonce_row_pass.h, run by one thread
per row here, by a CTA per row on the GPU; docs/design.md §6.5). Here they are judged
against the float64 oracle, like the public CPU op; and the table behind ``backend="auto"``
on CUDA (pixcontrast/_backends.py) is checked.
"""

from __future__ import annotations

import pytest
import torch

from _oracle import IGNORE, assert_row_terms_close, make_case
from pixcontrast._extension import has_kernels
from pixcontrast.infonce import reference_row_terms

pytestmark = pytest.mark.skipif(not has_kernels("CPU", "_infonce_forward_device_schedule"),
                                reason="extension not built (or built from older sources)")

OPS = torch.ops.pixcontrast
SCHEDULES = {
    "device": (lambda: OPS._infonce_forward_device_schedule,
               lambda: OPS._infonce_backward_columns_device_schedule),
    "host": (lambda: OPS.infonce_forward, lambda: OPS.infonce_backward_columns),
}


def fused(schedule, a, y, c, z, self_contrast, inv_t, normalize, w):
    """Row terms, d(Σ w·row_loss)/d anchors and /d contrast through the two ops, composed as
    the autograd formula of pixcontrast/infonce.py does."""
    fwd, bwd = (f() for f in SCHEDULES[schedule])
    row_loss, lse, sig, npos, row_grad = fwd(a, y, c, z, self_contrast, inv_t, IGNORE,
                                             normalize, True, False)
    coef = torch.where(npos > 0, w / npos.clamp(min=1), 0.0)
    gc, ga = bwd(a, y, c, z, self_contrast, inv_t, IGNORE, normalize, lse, sig, coef, False)
    grad_a = w[:, None] * row_grad + (ga if self_contrast else 0)
    return (row_loss, lse, sig, npos), grad_a, gc


def oracle(a, y, c, z, self_contrast, inv_t, normalize, w):
    ad = a.detach().double().requires_grad_()
    cd = c.detach().double().requires_grad_()
    terms = reference_row_terms(ad, y, cd if c.shape[0] else None, z if c.shape[0] else None,
                                self_contrast, inv_t, IGNORE, normalize)
    ga, gc = torch.autograd.grad((terms[0] * w).sum(), (ad, cd), allow_unused=True)
    gc = torch.zeros_like(cd) if gc is None else gc
    return terms, ga, gc


def operands(case):
    a = case.anchors
    if case.contrast is None:
        c, z = a.new_empty(0, a.shape[1]), case.labels.new_empty(0)
    else:
        c, z = case.contrast, case.contrast_labels
    self_contrast = case.contrast is None or case.include_anchors
    return a, case.labels, c, z, self_contrast


def check(case, schedule, rtol, atol=1e-6):
    a, y, c, z, self_contrast = operands(case)
    inv_t = 1.0 / case.temperature
    w = torch.randn(a.shape[0], dtype=torch.float64)
    terms, ga, gc = fused(schedule, a, y, c, z, self_contrast, inv_t, case.normalize,
                          w.to(a.dtype if a.dtype == torch.float64 else torch.float32))
    assert_row_terms_close((terms, ga, gc),
                           oracle(a, y, c, z, self_contrast, inv_t, case.normalize, w),
                           rtol, atol)


@pytest.mark.parametrize("schedule", ["device", "host"])
@pytest.mark.parametrize("mode", ["self", "bank", "bank+anchors", "bank-grad"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_schedules_match_oracle(schedule, mode, dtype):
    case = make_case(mode, n=41, m=97, d=12, dtype=dtype, sort_bank=False)
    check(case, schedule, rtol=1e-10 if dtype == torch.float64 else 2e-5)


# The negatives pass has two paths (csrc/common/infonce_rows.h, rows::fixed_shift): the fixed
# shift 1/τ (normalised, τ >= 0.03: one sweep of S, no rescale) and the running max (the rest).
PATHS = {
    "fixed τ=0.1": dict(normalize=True, temperature=0.1),
    "fixed τ=0.03": dict(normalize=True, temperature=0.03),
    "general τ=0.02": dict(normalize=True, temperature=0.02),
    "general unnormalised": dict(normalize=False, temperature=0.5, scale=0.5),
}


@pytest.mark.parametrize("schedule", ["device", "host"])
@pytest.mark.parametrize("mode", ["self", "bank+anchors", "bank-grad"])
@pytest.mark.parametrize("path", list(PATHS))
def test_fixed_shift_and_general_paths_match_oracle(schedule, mode, path):
    """Forward terms, anchor gradient and the column backward (whose weights use the forward's
    λ, from either path) against the float64 oracle; fp32 errors scale with 1/τ."""
    case = make_case(mode, n=41, m=97, d=12, sort_bank=False, **PATHS[path])
    check(case, schedule, rtol=2e-5 * max(1.0, 0.1 / case.temperature))


def _far_below_shift_case(name):
    """Rows whose negatives all sit at or near s = -1/τ, where the fixed shift 1/τ makes
    every weight e^{s - 1/τ} ≈ e^{-2/τ}: it must not underflow to l = 0 (λ = -inf)."""
    d = 6
    v = torch.nn.functional.normalize(torch.randn(d, dtype=torch.float64), dim=0)
    near = [-v + 0.02 * torch.randn(d, dtype=torch.float64) for _ in range(3)]
    r = torch.randn(d, dtype=torch.float64)
    anchors, labels, columns, column_labels, self_contrast = {
        # one negative, anti-parallel: λ = -1/τ exactly
        "single negative": ([v], [0], [v, -2 * v, r], [0, 1, IGNORE], False),
        # an anti-parallel positive among negatives near -1/τ: loss ≈ log 4, gradient O(1)
        "all negatives near -1/τ": ([v], [0], [-v, *near, r], [0, 1, 1, 2, IGNORE], False),
        # no negative left (the others ignored or of the row's class): λ = -inf, loss 0
        "negatives all ignored": ([v, v], [0, IGNORE], [v, -v], [0, IGNORE], False),
        # self-contrast: rows 1, 2 have one negative (row 0) at -1/τ; row 0 two, no positive
        "self-contrast": ([v, -v, -3 * v], [0, 1, 1], [], [], True),
    }[name]
    a = torch.stack(anchors).float()
    c = torch.stack(columns).float() if columns else a.new_empty(0, d)
    return a, torch.tensor(labels), c, torch.tensor(column_labels, dtype=torch.long), \
        self_contrast


@pytest.mark.parametrize("schedule", ["device", "host"])
@pytest.mark.parametrize("temperature", [0.1, 0.03, 0.025, 0.01])
@pytest.mark.parametrize("name", ["single negative", "all negatives near -1/τ",
                                  "negatives all ignored", "self-contrast"])
def test_negatives_far_below_the_shift(schedule, temperature, name):
    """λ ≈ -1/τ (or -inf with no negative) against the oracle, on both sides of the fast
    path's bound τ = 0.03 and at τ = 0.01, where e^{-2/τ} would underflow fp32."""
    a, y, c, z, self_contrast = _far_below_shift_case(name)
    inv_t = 1.0 / temperature
    w = torch.randn(a.shape[0], dtype=torch.float64)
    ours = fused(schedule, a, y, c, z, self_contrast, inv_t, True, w.float())
    ref = oracle(a, y, c, z, self_contrast, inv_t, True, w)
    assert_row_terms_close(ours, ref, rtol=2e-5 * max(1.0, 0.1 / temperature))


@pytest.mark.parametrize("mode", ["self", "bank+anchors"])
@pytest.mark.parametrize("temperature", [0.1, 0.02])
def test_device_schedule_over_several_chunks(mode, temperature):
    """A chunk is ≤ 8 MB of fp32 logits: 1100 rows make ~1900-column chunks, so 5000
    contrast rows (and 1100 anchor columns) span several, and row blocks see partial
    classes in each: l accumulates across chunks with the fixed shift (τ = 0.1), and with the
    running max (τ = 0.02) l and U are rescaled whenever a later chunk raises a row's max."""
    case = make_case(mode, n=1100, m=5000, d=8, classes=7, sort_bank=False,
                     temperature=temperature)
    check(case, "device", rtol=3e-5 * max(1.0, 0.1 / temperature))


@pytest.mark.parametrize("mode", ["self", "bank-grad"])
def test_device_schedule_large_unnormalised_logits(mode):
    """Logits ~1e4 (norms ~300, unnormalised): the column backward's e^{s−λ} must come from
    the very logits the forward's λ did (csrc/common/infonce_rows.h: logit() is rounded
    before any subtraction), or the contrast gradient drifts by e^{ulp(s)}."""
    case = make_case(mode, n=33, m=71, d=20, scale=300.0, normalize=False, temperature=50.0)
    a, y, c, z, self_contrast = operands(case)
    w = torch.randn(a.shape[0], dtype=torch.float64)
    _, ga, gc = fused("device", a, y, c, z, self_contrast, 1 / 50.0, False, w.float())
    _, ref_ga, ref_gc = oracle(a, y, c, z, self_contrast, 1 / 50.0, False, w)
    for x, r in ((ga, ref_ga), (gc, ref_gc)):
        if r.numel():
            assert torch.isfinite(x).all()
            err = (x.double() - r).abs().max().item()
            assert err <= 1e-4 * r.abs().max().item() + 1e-6, f"error {err:.3g}"


def test_device_and_host_schedules_agree_and_are_deterministic():
    case = make_case("bank+anchors", n=64, m=300, d=16, sort_bank=True)
    a, y, c, z, self_contrast = operands(case)
    w = torch.randn(a.shape[0])
    dev1 = fused("device", a, y, c, z, self_contrast, 10.0, True, w)
    dev2 = fused("device", a, y, c, z, self_contrast, 10.0, True, w)
    host = fused("host", a, y, c, z, self_contrast, 10.0, True, w)
    for x1, x2 in zip(torch.utils._pytree.tree_leaves(dev1), torch.utils._pytree.tree_leaves(dev2)):
        assert torch.equal(x1, x2)
    for x, h in zip(torch.utils._pytree.tree_leaves(dev1), torch.utils._pytree.tree_leaves(host)):
        torch.testing.assert_close(x, h, rtol=2e-5, atol=2e-6)


def test_device_schedule_rows_without_anything():
    """Every row ignored, or no column at all: the empty-set values, no NaN."""
    a = torch.randn(6, 5)
    y = torch.full((6,), IGNORE)
    c = torch.randn(9, 5)
    z = torch.randint(0, 3, (9,))
    out = OPS._infonce_forward_device_schedule(a, y, c, z, True, 10.0, IGNORE, True, True, False)
    assert (out[0] == 0).all() and (out[1] == float("-inf")).all() and (out[4] == 0).all()
    y = torch.zeros(6, dtype=torch.long)  # one class: positives, no negative
    out = OPS._infonce_forward_device_schedule(a, y, c[:0], z[:0], True, 10.0, IGNORE, True,
                                               True, False)
    assert (out[1] == float("-inf")).all() and (out[0] == 0).all() and (out[3] == 5).all()
    assert torch.isfinite(out[4]).all() and (out[4] == 0).all()


# --- "auto" on CUDA: the measured table ------------------------------------------------

def test_auto_order_follows_the_measured_table():
    from pixcontrast._backends import LOSS_FWD_BWD_MS_H200, measured_order
    table = {("paper-bank", "bf16"): {"triton": 5.0, "cuda": 0.9},
             ("paper-bank", "fp32"): {"triton": 29.4, "cuda": None}}
    assert measured_order("paper-bank", "bf16", table) == ("cuda", "triton")
    assert measured_order("paper-bank", "fp32", table) == ("triton", "cuda")
    assert measured_order("paper-bank", "tf32", table) == ("triton", "cuda")  # no row
    # Today's table: the rebuilt CUDA backend has no measurement yet, Triton leads.
    for key in LOSS_FWD_BWD_MS_H200:
        assert measured_order(*key) == ("triton", "cuda")


def test_auto_on_cuda_ranks_by_workload_and_mode(monkeypatch):
    from pixcontrast import _backends, infonce
    table = {("paper-mem-config", "bf16"): {"triton": 2.0, "cuda": 0.2},
             ("paper-bank", "bf16"): {"triton": 1.0, "cuda": 1.1},
             ("paper-bank", "tf32"): {"triton": 9.0, "cuda": 1.4}}
    monkeypatch.setattr(_backends, "LOSS_FWD_BWD_MS_H200", table)
    cuda = torch.device("cuda")
    small = torch.empty(120, 8, dtype=torch.bfloat16)
    big = torch.empty(1024, 8, dtype=torch.bfloat16)
    assert infonce._cuda_rank(cuda, small) == ("cuda", "triton")
    assert infonce._cuda_rank(cuda, big) == ("triton", "cuda")
    assert infonce._cuda_rank(torch.device("cpu"), big) is None
    monkeypatch.setattr(infonce, "cuda_matmul_allows_tf32", lambda: True)
    assert infonce._cuda_rank(cuda, torch.empty(1024, 8)) == ("cuda", "triton")
