"""Float64 emulations of two numerical facts the GPU kernels and GPU tests rely on.

1. The column backward must recompute *bit-identical* logits. With unnormalised inputs of
   large norm ``|s|`` reaches ~1e5 and half an ulp of ``s`` is ~0.016: if the backward uses
   the unrounded ``dot·(1/τ)`` (what FMA contraction gives) while ``lse`` was built from the
   rounded ``s``, the contrast gradient misses the GPU large-norm test's bound many times
   over (an H200 showed 1.13 against 0.08). Identical logits give the exact gradient. This
   is why every Triton launch is compiled with ``enable_fp_fusion=False`` (checked in
   tests/test_infonce_aot.py), and it shows that test_gpu_large_norms can catch a relapse.
2. The fp32 tolerance model of the GPU tests (tests/_oracle.py ``fp32_rtol``): 3xTF32 on
   tensor cores that truncate each accumulation step stays inside the model's bound, while
   its error is biased (larger than with round-to-nearest accumulation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tests._oracle import fp32_rtol, make_case, max_err, oracle, run, scale_of

BASE_TEMPERATURE = 0.07


def _masks(case):
    y, z = case.labels, case.contrast_labels
    valid = (y != -1)[:, None] & (z != -1)[None, :]
    same = y[:, None] == z[None, :]
    return valid & same, valid & ~same


def emulated_contrast_grad(case, backward_logits: str) -> torch.Tensor:
    """d loss / d contrast (``normalize=False``, unit upstream) as the Triton kernels compute
    it: fp32 dot products, ``s = fp32(dot · inv_t)`` in the forward (lse, pos_sig), and in
    the column backward either the same ``s`` or the contracted, unrounded ``dot · inv_t``."""
    a, c = case.anchors.double(), case.contrast.double()
    inv_t = torch.tensor(1.0 / case.temperature, dtype=torch.float32)
    dot = (a @ c.T).float()
    s_rounded = (dot * inv_t).double()                 # mul.rn.f32
    s_unrounded = dot.double() * inv_t.double()         # fma.rn.f32(dot, inv_t, -lse)
    pos, neg = _masks(case)
    lse = torch.logsumexp(s_rounded.masked_fill(~neg, float("-inf")), 1)
    pos_sig = torch.where(pos, torch.sigmoid(lse[:, None] - s_rounded), 0.0).sum(1)
    num_pos = pos.sum(1).double()
    rows = num_pos > 0
    coef = torch.where(rows, case.temperature / BASE_TEMPERATURE / rows.sum()
                       / num_pos.clamp(min=1), 0.0)
    s = s_rounded if backward_logits == "identical" else s_unrounded
    e = torch.exp(s - lse[:, None])
    g = torch.where(pos, -coef[:, None] * torch.sigmoid(lse[:, None] - s),
                    torch.where(neg, (coef * pos_sig)[:, None] * e.clamp(max=1.0), 0.0))
    return (g.T @ a) * inv_t.double()


def test_backward_logits_must_be_bit_identical_to_the_forward():
    exceeded = 0
    for _ in range(4):  # fresh cases: the mismatch shows in most, identity in all
        case = make_case("bank-grad", n=65, m=301, d=40, scale=300.0, normalize=False,
                         temperature=50.0)
        up = torch.ones((), dtype=torch.float64)
        ref = oracle(case, upstream=up)[2]
        dense = run(case, backend="reference", upstream=up)[2]
        # test_gpu_large_norms' bound (assert_large_norms_match: k=4, rtol=1e-4)
        bound = 4 * max_err(dense, ref) + 1e-4 * scale_of(ref)
        identical = max_err(emulated_contrast_grad(case, "identical"), ref)
        assert identical <= bound, f"identical logits: error {identical:.3g} > {bound:.3g}"
        exceeded += max_err(emulated_contrast_grad(case, "contracted"), ref) > bound
    assert exceeded >= 1, "half-ulp logit mismatches stayed inside the GPU test's bound"


def _round_tf32(x: torch.Tensor) -> torch.Tensor:
    """Round fp32 values to TF32 (10 explicit mantissa bits), to nearest (cvt.rna)."""
    bits = x.float().view(torch.int32)
    bits = (bits + 0x1000) & ~0x1FFF
    return bits.view(torch.float32).double()


def _to_fp32(x: torch.Tensor, truncate: bool) -> torch.Tensor:
    f = x.float()
    if truncate:  # round toward zero
        over = f.double().abs() > x.abs()
        f = torch.where(over, torch.nextafter(f, torch.zeros_like(f)), f)
    return f.double()


def tf32x3_logits(a: torch.Tensor, c: torch.Tensor, truncate: bool) -> torch.Tensor:
    """``a @ c.T`` as 3xTF32 on tensor cores: hi/lo TF32 split of both operands, products
    lo·hi + hi·lo + hi·hi, K = 8 per MMA step, each step added to an fp32 accumulator that
    rounds to nearest or (``truncate``) toward zero."""
    a_hi, c_hi = _round_tf32(a), _round_tf32(c)
    a_lo, c_lo = _round_tf32(a - a_hi), _round_tf32(c - c_hi)
    acc = torch.zeros(a.shape[0], c.shape[0], dtype=torch.float64)
    for k in range(0, a.shape[1], 8):
        for x, w in ((a_lo, c_hi), (a_hi, c_lo), (a_hi, c_hi)):
            acc = _to_fp32(acc + x[:, k:k + 8] @ w[:, k:k + 8].T, truncate)
    return acc


def loss_from_logits(s: torch.Tensor, case) -> torch.Tensor:
    pos, neg = _masks(case)
    lse = torch.logsumexp(s.masked_fill(~neg, float("-inf")), 1)
    num_pos = pos.sum(1)
    row = torch.where(pos, F.softplus(lse[:, None] - s), 0.0).sum(1) / num_pos.clamp(min=1)
    return case.temperature / BASE_TEMPERATURE * row[num_pos > 0].mean()


def test_fp32_tolerance_model_bounds_truncating_3xtf32():
    d = 300
    case = make_case("bank", n=96, m=1024, d=d, classes=19)
    a = F.normalize(case.anchors.double(), dim=1).float().double()
    c = F.normalize(case.contrast.double(), dim=1).float().double()
    ref = loss_from_logits(a @ c.T / case.temperature, case)
    errors = {}
    for truncate in (False, True):
        s = tf32x3_logits(a, c, truncate) / case.temperature
        errors[truncate] = abs(loss_from_logits(s, case).item() - ref.item()) / abs(ref.item())
    assert errors[True] <= fp32_rtol(d, tensor_cores=True)
    assert errors[True] > errors[False]  # truncation biases the error
    assert fp32_rtol(d, tensor_cores=True) > fp32_rtol(d, tensor_cores=False)
    assert math.isclose(fp32_rtol(d, 0.01, tensor_cores=True),
                        10 * fp32_rtol(d, 0.1, tensor_cores=True))
