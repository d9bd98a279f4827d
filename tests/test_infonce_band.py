"""The band kernel of the same-class positives (csrc/common/infonce_band.h), tested on the CPU.

``pixcontrast::_infonce_band_positives`` runs the CUDA band kernel's schedule on the CPU (the
label sorts, the work list of csrc/common/infonce_band.h's band_plan, every item through the
shared band_item with the tile products as plain loops, the merge in item order): given λ, it
returns per row Σ softplus(λ − s), Σ σ(λ − s), |P| and V = Σ σ·ĉ over the row's positives
(SupCon: Σ (λ − s), |P|, |P|, Σ ĉ). Judged against a float64 oracle on fresh random data:
fp32 within fp32 rounding, bf16/fp16 within twice the error of the same float64 computation
on operands rounded to their dtype (what the tensor cores multiply) plus a floor for the
16-bit weights of V.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _oracle import IGNORE, make_case
from pixcontrast._extension import has_kernels

pytestmark = pytest.mark.skipif(not has_kernels("CPU", "_infonce_band_positives"),
                                reason="extension not built (or built from older sources)")

OPS = torch.ops.pixcontrast


def operands(mode, n, m, d, dtype, classes=5, sort_bank=None):
    case = make_case("self" if mode == "self" else "bank", n=n, m=m, d=d, classes=classes,
                     dtype=dtype, sort_bank=sort_bank)
    a, y = case.anchors, case.labels
    if case.contrast is None:
        c, z = a.new_empty(0, d), y.new_empty(0)
    else:
        c, z = case.contrast, case.contrast_labels
    return a, y, c, z, mode != "bank"


def oracle(a, y, c, z, self_contrast, inv_t, supcon, rounded=False, lse=None):
    """float64 (loss, sig, count, V, λ) per row. `rounded`: â and ĉ rounded to the inputs'
    dtype after normalisation in fp32 (the operands the kernel multiplies); `lse`: a given
    λ (the band takes λ as an input), else the oracle's own."""
    def unit(x):
        x = F.normalize(x.float(), dim=1)
        return (x.to(a.dtype) if rounded else x).double()
    ah = unit(a)
    cols, zc = [ah] if self_contrast else [], [y] if self_contrast else []
    if c.shape[0]:
        cols.append(unit(c))
        zc.append(z)
    ch, zz = torch.cat(cols), torch.cat(zc)
    s = ah @ ch.T * inv_t
    n = a.shape[0]
    self_pair = torch.zeros_like(s, dtype=torch.bool)
    if self_contrast:
        self_pair[:, :n] = torch.eye(n, dtype=torch.bool)
    valid = (y != IGNORE)[:, None] & (zz != IGNORE)[None, :] & ~self_pair
    pos = valid & (y[:, None] == zz[None, :])
    if lse is None:
        den = valid if supcon else valid & ~pos
        lse = torch.logsumexp(s.masked_fill(~den, float("-inf")), dim=1)
    x = lse.double()[:, None] - s
    sp, sg = (x, torch.ones_like(x)) if supcon else (F.softplus(x), torch.sigmoid(x))
    sp, sg = torch.where(pos, sp, 0.0), torch.where(pos, sg, 0.0)
    return sp.sum(1), sg.sum(1), pos.sum(1).double(), sg @ ch, lse


def band(a, y, c, z, self_contrast, inv_t, lse, supcon, num_items=3, block=0,
         need_grad=True):
    return OPS._infonce_band_positives(a, y, c, z, self_contrast, inv_t, IGNORE,
                                       lse.float(), need_grad, supcon, num_items, block)


# Floors of the bounds, relative to the largest reference value: fp32 sums in fp32; the
# 16-bit weights of V keep 8 (bf16) or 11 (fp16) bits.
RTOL = {torch.float32: 2e-5, torch.bfloat16: 5e-4, torch.float16: 5e-4}
V_RTOL = {torch.float32: 2e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def check(a, y, c, z, self_contrast, supcon, inv_t=10.0, **kw):
    """Against the exact float64 oracle; 16-bit within twice the error of the float64
    computation on the same rounded operands (the dense same-dtype error) plus a floor."""
    lse = oracle(a, y, c, z, self_contrast, inv_t, supcon)[4].float()
    ref = oracle(a, y, c, z, self_contrast, inv_t, supcon, lse=lse)
    dense = oracle(a, y, c, z, self_contrast, inv_t, supcon, rounded=True, lse=lse)
    out = band(a, y, c, z, self_contrast, inv_t, lse, supcon, **kw)
    assert torch.equal(out[2].double(), ref[2]), "count differs"
    low = a.dtype != torch.float32
    for name, x, r, dn, tol in (("loss", out[0], ref[0], dense[0], RTOL[a.dtype]),
                                ("sig", out[1], ref[1], dense[1], RTOL[a.dtype]),
                                ("V", out[3], ref[3], dense[3], V_RTOL[a.dtype])):
        assert torch.isfinite(x).all(), f"{name} is not finite"
        err = (x.double() - r).abs().max().item() if r.numel() else 0.0
        dense_err = (dn - r).abs().max().item() if low and r.numel() else 0.0
        scale = r.abs().max().item() if r.numel() else 0.0
        bound = 1e-6 + 2 * dense_err + tol * scale
        assert err <= bound, f"{name}: error {err:.3g} > {bound:.3g} (dense {dense_err:.3g})"
    return out


@pytest.mark.parametrize("supcon", [False, True])
@pytest.mark.parametrize("mode", ["self", "bank", "bank+anchors"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_band_matches_oracle(dtype, mode, supcon):
    """Ignored rows and columns, two rows whose class has no other member (no positive),
    an unsorted or sorted bank; 41 rows in 16-row blocks (not a multiple)."""
    a, y, c, z, self_contrast = operands(mode, n=41, m=157, d=48, dtype=dtype)
    check(a, y, c, z, self_contrast, supcon, block=16)


@pytest.mark.parametrize("d", [256, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_band_wide_rows(dtype, d):
    """D = 256 and 300 (not a multiple of the k step), the default tile for that D."""
    a, y, c, z, self_contrast = operands("bank+anchors", n=37, m=90, d=d, dtype=dtype)
    check(a, y, c, z, self_contrast, False)


@pytest.mark.parametrize("num_items", [1, 2, 50, 1000])
def test_band_class_spans_several_items(num_items):
    """Classes of ~30 rows and ~300 columns in 16×16 tiles: two row blocks per class,
    ~19 column tiles per block, cut into 1 to 19 items (tiles_per_item from the target);
    the merge adds a row's items in item order."""
    a, y, c, z, self_contrast = operands("bank+anchors", n=100, m=900, d=24,
                                         dtype=torch.float32, classes=3, sort_bank=True)
    check(a, y, c, z, self_contrast, False, num_items=num_items, block=16)


def test_band_deterministic_and_schedule_free():
    """Two runs give the same bits; other blocks and item counts the same values to rounding."""
    a, y, c, z, self_contrast = operands("bank+anchors", n=70, m=400, d=40,
                                         dtype=torch.float32, sort_bank=False)
    lse = oracle(a, y, c, z, self_contrast, 10.0, False)[4]
    first = band(a, y, c, z, self_contrast, 10.0, lse, False, num_items=7, block=16)
    again = band(a, y, c, z, self_contrast, 10.0, lse, False, num_items=7, block=16)
    other = band(a, y, c, z, self_contrast, 10.0, lse, False, num_items=2, block=32)
    for x1, x2, x3 in zip(first, again, other):
        assert torch.equal(x1, x2)
        torch.testing.assert_close(x1, x3, rtol=2e-5, atol=1e-6)


def test_band_without_gradient_and_empty_sets():
    """need_grad off: V is [0, D]; every row ignored: zeros; no negative (λ = −inf): the
    InfoNCE terms are 0 and |P| still counts."""
    a, y, c, z, self_contrast = operands("bank", n=20, m=60, d=16, dtype=torch.float32)
    lse = oracle(a, y, c, z, self_contrast, 10.0, False)[4]
    out = band(a, y, c, z, self_contrast, 10.0, lse, False, need_grad=False)
    assert out[3].shape == (0, 16)
    ignored = torch.full_like(y, IGNORE)
    out = band(a, ignored, c, z, True, 10.0, lse, False)
    assert all((x == 0).all() for x in out)
    one = torch.zeros_like(y)
    none = torch.full_like(lse, float("-inf"))
    out = band(a, one, c[:0], z[:0], True, 10.0, none, False)
    assert (out[0] == 0).all() and (out[1] == 0).all() and (out[3] == 0).all()
    assert (out[2] == y.shape[0] - 1).all()


def test_band_non_contiguous_contrast():
    a, y, c, z, self_contrast = operands("bank", n=30, m=80, d=20, dtype=torch.float32)
    ct = c.t().contiguous().t()  # column-major [M, D]
    assert not ct.is_contiguous()
    check(a, y, ct, z, self_contrast, False, block=16)


def test_band_rejects_bad_arguments():
    a, y, c, z, _ = operands("bank", n=8, m=10, d=4, dtype=torch.float32)
    lse = torch.zeros(8)
    with pytest.raises(RuntimeError, match="num_items"):
        OPS._infonce_band_positives(a, y, c, z, False, 10.0, IGNORE, lse, True, False, 0, 0)
    with pytest.raises(RuntimeError, match="block"):
        OPS._infonce_band_positives(a, y, c, z, False, 10.0, IGNORE, lse, True, False, 3, 24)
    with pytest.raises(RuntimeError, match="lse"):
        OPS._infonce_band_positives(a, y, c, z, False, 10.0, IGNORE, lse[:3], True, False, 3, 0)
    with pytest.raises(RuntimeError, match="float64|anchors"):
        OPS._infonce_band_positives(a.double(), y, c.double(), z, False, 10.0, IGNORE, lse,
                                    True, False, 3, 0)
