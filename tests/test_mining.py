"""Hard example mining (docs/design.md §2.8): selection, loss and gradients against a
float64 oracle; the semi-hard draw against the reference and against uniformity."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from pixcontrast.mining import (
    BACKENDS, floyd_ranks, mining_reference, pool_sizes, selected_columns,
)
from pixcontrast.ops import fused_pixel_contrast
from tests._oracle import IGNORE, assert_matches, fp32_rtol, make_case

MODES = ["self", "bank", "bank+anchors", "bank-grad"]
KERNELS = ["cpu", "triton"]      # triton: the interpreter on CPU tensors (conftest.py)
F64 = ["torch", "cpu"]           # the backends that take float64


# --- an independent float64 oracle of the selection: a plain loop per row -----------------

def _columns64(case):
    a = case.anchors.double()
    a = F.normalize(a, dim=1) if case.normalize else a
    cols, labs, self_cols = [], [], 0
    if case.contrast is None or case.include_anchors:
        cols.append(a)
        labs.append(case.labels)
        self_cols = a.shape[0]
    if case.contrast is not None:
        c = case.contrast.double()
        cols.append(F.normalize(c, dim=1) if case.normalize else c)
        labs.append(case.contrast_labels)
    return a, torch.cat(cols), torch.cat(labs), self_cols


def loop_selection(case, mining, k_neg, k_pos, fraction=0.1, u=None):
    """Per row, sort each set by (similarity, column), cut the pool, then Floyd by hand."""
    a, c, z, self_cols = _columns64(case)
    s = (a @ c.T) / case.temperature
    neg_out, pos_out = [], []
    for i in range(a.shape[0]):
        y = int(case.labels[i])
        negs, poss = [], []
        for j in range(c.shape[0]):
            if y == IGNORE or int(z[j]) == IGNORE or (j < self_cols and j == i):
                continue
            (poss if int(z[j]) == y else negs).append(j)
        negs.sort(key=lambda j: (-float(s[i, j]), j))
        poss.sort(key=lambda j: (float(s[i, j]), j))
        rows = []
        for members, k, off in ((negs, k_neg, 0), (poss, k_pos, k_neg)):
            if mining == "hardest":
                q = min(k, len(members))
                chosen = members[:q]
            else:
                q = min(len(members), max(k, math.ceil(len(members) * fraction)))
                pool = sorted(members[:q])               # column order
                take, picked = min(k, q), set()
                for step in range(take):
                    j = q - take + step
                    t = min(int(math.floor(float(u[i, off + step]) * (j + 1))), j)
                    picked.add(j if t in picked else t)
                chosen = [pool[r] for r in picked]
            rows.append(sorted(chosen) + [-1] * (k - len(chosen)))
        neg_out.append(rows[0])
        pos_out.append(rows[1])
    return torch.tensor(neg_out).reshape(-1, k_neg), torch.tensor(pos_out).reshape(-1, k_pos)


def _uniforms(n, k_neg, k_pos, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, k_neg + k_pos), dtype=torch.float64, generator=g)


def _select(case, backend, mining, k_neg, k_pos, seed=0, fraction=0.1):
    return selected_columns(
        case.anchors, case.labels, case.contrast, case.contrast_labels, mining=mining,
        num_negatives=k_neg, num_positives=k_pos, semi_hard_fraction=fraction,
        generator=torch.Generator(case.anchors.device).manual_seed(seed),
        temperature=case.temperature,
        ignore_index=IGNORE, normalize=case.normalize, include_anchors=case.include_anchors,
        backend=backend)


# --- selection ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", F64)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mining", ["hardest", "semi-hard"])
@pytest.mark.parametrize("k", [(1, 1), (5, 3), (200, 50)])   # (200, 50): fewer candidates
def test_selection_matches_loop_oracle(backend, mode, mining, k):
    case = make_case(mode, n=23, m=61, d=12, dtype=torch.float64)
    k_neg, k_pos = k
    ours = _select(case, backend, mining, k_neg, k_pos, seed=7)
    u = _uniforms(case.anchors.shape[0], k_neg, k_pos, 7)
    ref = loop_selection(case, mining, k_neg, k_pos, u=u)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])


@pytest.mark.parametrize("backend", ["torch", *KERNELS])
@pytest.mark.parametrize("mining", ["hardest", "semi-hard"])
@pytest.mark.parametrize("k_neg, k_pos", [(6, 4), (200, 50)])   # (200, 50): fewer candidates
def test_ties_by_lowest_column(backend, mining, k_neg, k_pos):
    """Small-integer embeddings, unnormalised, τ a power of 2: every logit is exact in fp32
    and fp64, and many are equal, so the tie rule decides; fp32 must match the fp64 loop."""
    n, m, d = 31, 90, 6
    labels = torch.randint(0, 4, (n,))
    labels[torch.rand(n) < 0.1] = IGNORE
    zl = torch.randint(0, 4, (m,))
    anchors = torch.randint(-1, 2, (n, d)).float()
    contrast = torch.randint(-1, 2, (m, d)).float()
    for mode in ("self", "bank+anchors"):
        case = make_case("bank", n=n, m=m, d=d)
        case.anchors, case.labels, case.contrast, case.contrast_labels = (
            anchors, labels, contrast, zl)
        case.normalize, case.temperature = False, 0.5
        case.include_anchors = mode == "bank+anchors"
        if mode == "self":
            case.contrast = case.contrast_labels = None
        ours = _select(case, backend, mining, k_neg, k_pos, seed=3, fraction=0.3)
        ref = loop_selection(case, mining, k_neg, k_pos, fraction=0.3,
                             u=_uniforms(n, k_neg, k_pos, 3))
        assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1]), mode


def test_pool_sizes_rule():
    count = torch.tensor([0, 3, 10, 11, 100, 1000])
    assert pool_sizes(count, 5, False, 0.1).tolist() == [0, 3, 5, 5, 5, 5]
    assert pool_sizes(count, 5, True, 0.1).tolist() == [0, 3, 5, 5, 10, 100]
    assert pool_sizes(count, 5, True, 1.0).tolist() == count.tolist()


# --- loss and gradients ------------------------------------------------------------------

def _run(case, backend, *, mining, loss, k_neg=5, k_pos=3, seed=11, double=False,
         reduction="mean", upstream=None, fraction=0.1):
    conv = (lambda t: t.detach().double()) if double else (lambda t: t.detach().clone())
    a = conv(case.anchors).requires_grad_()
    c = None if case.contrast is None else conv(case.contrast)
    if c is not None and case.contrast_grad:
        c.requires_grad_()
    kw = dict(num_negatives=k_neg, num_positives=k_pos) if mining else {}
    out = fused_pixel_contrast(
        a, case.labels, c, case.contrast_labels, reduction=reduction, backend=backend,
        mining=mining, loss=loss, generator=torch.Generator(a.device).manual_seed(seed),
        semi_hard_fraction=fraction, **case.kwargs(), **kw)
    if upstream is None:
        upstream = torch.randn(out.shape, dtype=torch.float64)
    inputs = [a] + ([c] if c is not None and case.contrast_grad else [])
    grads = torch.autograd.grad((out.double() * upstream).sum(), inputs)
    return out.detach(), grads[0], grads[1] if len(grads) > 1 else None


@pytest.mark.parametrize("backend", ["cpu"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mining", ["hardest", "semi-hard"])
@pytest.mark.parametrize("loss", ["infonce", "supcon"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_float64_matches_oracle(backend, mode, mining, loss, reduction):
    case = make_case(mode, n=29, m=83, d=16, dtype=torch.float64)
    n = case.anchors.shape[0]
    up = torch.randn(n, dtype=torch.float64) if reduction == "none" else torch.randn(())
    ours = _run(case, backend, mining=mining, loss=loss, reduction=reduction, upstream=up)
    ref = _run(case, "torch", mining=mining, loss=loss, reduction=reduction, upstream=up)
    assert_matches(ours, ref, 1e-10, 1e-12)


def _oracle_on_selection(case, neg, pos, loss, upstream):
    """Float64 loss and gradients of the given selection (kernel's own), by autograd."""
    a0 = case.anchors.detach().double().requires_grad_()
    c0 = None if case.contrast is None else case.contrast.detach().double()
    if c0 is not None and case.contrast_grad:
        c0.requires_grad_()
    a = F.normalize(a0, dim=1) if case.normalize else a0
    cols = []
    if case.contrast is None or case.include_anchors:
        cols.append(a)
    if c0 is not None:
        cols.append(F.normalize(c0, dim=1) if case.normalize else c0)
    c = torch.cat(cols)
    sel = torch.cat([neg, pos], dim=1)
    s = (a[:, None, :] * c[sel.clamp(min=0)]).sum(-1) / case.temperature
    used = sel >= 0
    is_pos = torch.zeros_like(used)
    is_pos[:, neg.shape[1]:] = True
    den = used if loss == "supcon" else used & ~is_pos
    has = den.any(1, keepdim=True)
    lse = torch.logsumexp(torch.where(has, s.masked_fill(~den, -math.inf), 0.0), 1)
    lse = torch.where(has[:, 0], lse, -math.inf)
    x = lse[:, None] - s
    p = used & is_pos
    per = torch.where(p, x if loss == "supcon" else F.softplus(x), 0.0)
    k = p.sum(1)
    row = per.sum(1) / k.clamp(min=1)
    out = 0.1 / 0.07 * row.sum() / (k > 0).sum().clamp(min=1)
    inputs = [a0] + ([c0] if c0 is not None and case.contrast_grad else [])
    grads = torch.autograd.grad(out * upstream, inputs)
    return out.detach(), grads[0], grads[1] if len(grads) > 1 else None


@pytest.mark.parametrize("backend, dtype", [("cpu", torch.float32), ("cpu", torch.bfloat16),
                                            ("triton", torch.float32)])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mining", ["hardest", "semi-hard"])
@pytest.mark.parametrize("loss", ["infonce", "supcon"])
def test_low_precision_matches_oracle(backend, mode, mining, loss, dtype):
    """fp32 / bf16 logits can order near-ties differently from float64, so the loss is judged
    on the kernel's own selection (which must be a valid one: no unselected column beats a
    selected one by more than the logits' error)."""
    case = make_case(mode, n=31, m=97, d=24, dtype=dtype)
    up = torch.randn(())
    ours = _run(case, backend, mining=mining, loss=loss, upstream=up)
    neg, pos = _select(case, backend, mining, 5, 3, seed=11)
    ref = _oracle_on_selection(case, neg, pos, loss, up)
    # bf16: the loss is returned in bf16 and the upstream gradient reaches it in bf16; the
    # dense backend shows the same error (two roundings): 2⁻⁷ of the scale.
    rtol = fp32_rtol(24, 0.1, tensor_cores=False) if dtype == torch.float32 else 2.0 ** -7
    assert_matches(ours, ref, rtol, 1e-6)
    if mining == "hardest":
        a, c, z, self_cols = _columns64(case)
        s = (a @ c.T) / case.temperature
        for i in range(s.shape[0]):
            y = int(case.labels[i])
            if y == IGNORE:
                continue
            valid = (z != IGNORE) & (torch.arange(len(z)) != (i if i < self_cols else -1))
            for sel, members, sign in ((neg[i], valid & (z != y), 1.0),
                                       (pos[i], valid & (z == y), -1.0)):
                chosen = torch.zeros_like(members)
                chosen[sel[sel >= 0]] = True
                assert not (chosen & ~members).any()
                if chosen.any() and (members & ~chosen).any():
                    worst_in = (sign * s[i][chosen]).min()
                    best_out = (sign * s[i][members & ~chosen]).max()
                    assert best_out <= worst_in + 1e-3


@pytest.mark.parametrize("backend", F64)
@pytest.mark.parametrize("mode", MODES)
def test_without_mining_the_reference_is_the_infonce_reference(backend, mode):
    """mining=None, loss="infonce" through the mining reference equals the InfoNCE op; and
    hardest with K ≥ every candidate equals it too (every column selected)."""
    case = make_case(mode, n=27, m=55, d=10, dtype=torch.float64)
    up = torch.randn(())
    ref = _run(case, "torch", mining=None, loss="infonce", upstream=up)
    ref = tuple(ref)
    base = _run_infonce(case, up)
    assert_matches(ref, base, 1e-12, 1e-14)
    everything = _run(case, backend, mining="hardest", loss="infonce", k_neg=500, k_pos=500,
                      upstream=up)
    assert_matches(everything, base, 1e-10, 1e-12)


def _run_infonce(case, up):
    a = case.anchors.detach().double().requires_grad_()
    c = None if case.contrast is None else case.contrast.detach().double()
    if c is not None and case.contrast_grad:
        c.requires_grad_()
    out = fused_pixel_contrast(a, case.labels, c, case.contrast_labels, backend="torch",
                               **case.kwargs())
    inputs = [a] + ([c] if c is not None and case.contrast_grad else [])
    grads = torch.autograd.grad(out * up, inputs)
    return out.detach(), grads[0], grads[1] if len(grads) > 1 else None


# --- the semi-hard draw --------------------------------------------------------------------

def test_floyd_reference_matches_kernel_and_loop():
    """The reference's vectorised Floyd equals the loop and the C++ kernel's draw (the latter
    through the selection test above); here it is checked against the loop directly."""
    pool = torch.tensor([0, 1, 4, 9, 30, 1000])
    u = torch.rand((6, 4), dtype=torch.float64)
    got = floyd_ranks(u, pool)
    for i, q in enumerate(pool.tolist()):
        take, picked = min(4, q), set()
        for step in range(take):
            j = q - take + step
            t = min(int(math.floor(float(u[i, step]) * (j + 1))), j)
            picked.add(j if t in picked else t)
        assert got[i].tolist() == sorted(picked) + [-1] * (4 - take)


def _draw_counts(u, pool_size, k, copies, backend="cpu"):
    """Select with ``copies`` identical anchors (each row its own uniforms) against a bank
    whose negatives have distinct, known similarities; counts per negative column."""
    d = 3
    anchor = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    m = 50
    angles = torch.linspace(0.05, 3.0, m, dtype=torch.float64)
    contrast = torch.stack([angles.cos(), angles.sin(), torch.zeros(m, dtype=torch.float64)], 1)
    zl = torch.ones(m, dtype=torch.long)                   # all negatives of class 0
    anchors = anchor.expand(copies, d).contiguous()
    labels = torch.zeros(copies, dtype=torch.long)
    fraction = pool_size / m
    sel, _ = torch.ops.pixcontrast.mining_select(
        anchors, labels, contrast, zl, False, 10.0, IGNORE, True, u, True, fraction, k, 0)
    counts = torch.bincount(sel[sel >= 0], minlength=m)
    return counts


def test_semi_hard_draw_is_uniform_over_the_pool():
    """Chi-square of the selection frequencies over the pool (the 20 most similar of 50
    negatives, K = 5, 4000 draws with a fixed seed): uniform passes, and the same test
    rejects a draw fed biased uniforms (u²), so it cannot pass a non-uniform draw."""
    copies, q, k = 4000, 20, 5
    g = torch.Generator().manual_seed(1234)
    u = torch.rand((copies, k), dtype=torch.float64, generator=g)
    counts = _draw_counts(u, q, k, copies)
    assert counts[q:].sum() == 0                             # never outside the pool
    assert counts.sum() == copies * k                        # K each, distinct per row
    expected = copies * k / q
    chi2 = ((counts[:q].double() - expected) ** 2 / expected).sum().item()
    # 19 degrees of freedom: P(χ² > 60) ≈ 3e-6.
    assert chi2 < 60, chi2
    biased = _draw_counts(u ** 2, q, k, copies)
    chi2_biased = ((biased[:q].double() - expected) ** 2 / expected).sum().item()
    assert chi2_biased > 60, chi2_biased


def test_semi_hard_pairs_are_uniform():
    """Pairs, not only marginals: with Q = 6, K = 2 every one of the 15 pairs is equally
    likely (χ², 14 dof, 6000 draws, fixed seed)."""
    copies, q, k = 6000, 6, 2
    g = torch.Generator().manual_seed(99)
    u = torch.rand((copies, k), dtype=torch.float64, generator=g)
    d = 3
    m = 30
    angles = torch.linspace(0.05, 3.0, m, dtype=torch.float64)
    contrast = torch.stack([angles.cos(), angles.sin(), torch.zeros(m, dtype=torch.float64)], 1)
    anchors = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64).expand(copies, d).contiguous()
    sel, _ = torch.ops.pixcontrast.mining_select(
        anchors, torch.zeros(copies, dtype=torch.long), contrast,
        torch.ones(m, dtype=torch.long), False, 10.0, IGNORE, True, u, True, q / m, k, 0)
    assert (sel < q).all() and (sel[:, 0] < sel[:, 1]).all()
    pair_id = sel[:, 0] * q + sel[:, 1]
    counts = torch.bincount(pair_id, minlength=q * q).double()
    pairs = [a * q + b for a in range(q) for b in range(a + 1, q)]
    observed = counts[pairs]
    assert observed.sum() == copies
    expected = copies / len(pairs)
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < 50, chi2                                   # P(χ²₁₄ > 50) ≈ 5e-6


def test_semi_hard_is_reproducible_and_varies():
    case = make_case("bank", n=25, m=200, d=8)
    a = _select(case, "cpu", "semi-hard", 4, 2, seed=5)
    b = _select(case, "cpu", "semi-hard", 4, 2, seed=5)
    c = _select(case, "cpu", "semi-hard", 4, 2, seed=6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


# --- edge cases ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", *KERNELS])
@pytest.mark.parametrize("mining, loss", [
    (None, "supcon"), ("hardest", "infonce"), ("hardest", "supcon"), ("semi-hard", "infonce"),
    ("semi-hard", "supcon")])
def test_empty_and_all_ignored(backend, loss, mining):
    kw = dict(num_negatives=4, num_positives=2) if mining else {}
    for n, m in ((0, 5), (5, 0), (0, 0)):
        a = torch.randn(n, 8, requires_grad=True)
        c = torch.randn(m, 8, requires_grad=True)
        out = fused_pixel_contrast(a, torch.randint(0, 3, (n,)), c, torch.randint(0, 3, (m,)),
                                   backend=backend, mining=mining, loss=loss, **kw)
        ga, gc = torch.autograd.grad(out, [a, c])
        assert out.item() == 0 and ga.shape == a.shape and gc.shape == c.shape
        assert (ga == 0).all() and (gc == 0).all()
    a = torch.randn(6, 8, requires_grad=True)
    out = fused_pixel_contrast(a, torch.full((6,), IGNORE), backend=backend, mining=mining,
                               loss=loss, **kw)
    (ga,) = torch.autograd.grad(out, [a])
    assert out.item() == 0 and (ga == 0).all()


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("mining", ["hardest", "semi-hard"])
def test_bank_may_change_after_forward(backend, mining):
    """A contrast set without gradient is not saved: updating it in place before backward
    (as PixelContrastLoss does with its bank) changes nothing."""
    case = make_case("bank", n=20, m=60, d=8)
    a = case.anchors.clone().requires_grad_()
    bank = case.contrast.clone()
    kw = dict(mining=mining, num_negatives=4, num_positives=2, backend=backend,
              ignore_index=IGNORE)
    out = fused_pixel_contrast(a, case.labels, bank, case.contrast_labels,
                               generator=torch.Generator().manual_seed(0), **kw)
    bank.mul_(-1.0)
    (ga,) = torch.autograd.grad(out, [a])
    a2 = case.anchors.clone().requires_grad_()
    ref = fused_pixel_contrast(a2, case.labels, case.contrast, case.contrast_labels,
                               generator=torch.Generator().manual_seed(0), **kw)
    (gr,) = torch.autograd.grad(ref, [a2])
    assert torch.equal(ga, gr)


def test_double_backward_refused():
    case = make_case("self", n=20, d=8)
    a = case.anchors.clone().requires_grad_()
    for kw in (dict(mining="hardest", num_negatives=3, num_positives=2), dict(loss="supcon")):
        out = fused_pixel_contrast(a, case.labels, backend="cpu", ignore_index=IGNORE, **kw)
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad(out, [a], create_graph=True)


# --- arguments and backends --------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(mining="hard"), ValueError, "mining must be one of"),
    (dict(loss="triplet"), ValueError, "loss must be one of"),
    (dict(num_negatives=4), ValueError, "num_negatives / num_positives need mining"),
    (dict(mining="hardest", num_negatives=0), ValueError, "num_negatives must be > 0"),
    (dict(mining="hardest", num_positives=2.0), TypeError, "num_positives must be an int"),
    (dict(mining="semi-hard", semi_hard_fraction=0.0), ValueError, "semi_hard_fraction"),
    (dict(mining="semi-hard", semi_hard_fraction=1.5), ValueError, "semi_hard_fraction"),
    (dict(mining="semi-hard", generator=3), TypeError, "generator must be"),
    (dict(mining="hardest", backend="gpu"), ValueError, "backend must be"),
    (dict(mining="hardest", backend="cuda"), RuntimeError, "mining has no CUDA kernels"),
    (dict(mining="hardest", backend="triton", anchors=torch.randn(4, 8).double()),
     RuntimeError, "triton: dtype torch.float64 is not supported"),
])
def test_bad_arguments(kwargs, error, match):
    a = kwargs.pop("anchors", torch.randn(4, 8))
    with pytest.raises(error, match=match):
        fused_pixel_contrast(a, torch.randint(0, 2, (4,)), **kwargs)


def test_backends_declared():
    assert BACKENDS.names == ("cpu", "triton", "cuda", "torch", "reference")
    assert BACKENDS.reasons("cpu", torch.device("cpu"), torch.randn(2, 4)) == []
    assert BACKENDS.choose("auto", torch.device("cpu"), torch.randn(2, 4)) == "cpu"


def test_reference_is_independent_of_the_draw_source():
    """The reference and the cpu kernel take the same uniforms from the generator."""
    case = make_case("bank", n=15, m=70, d=6, dtype=torch.float64)
    u = _uniforms(15, 4, 2, 21)
    ref = mining_reference(case.anchors, case.labels, case.contrast, case.contrast_labels,
                           ignore_index=IGNORE, mining="semi-hard", num_negatives=4,
                           num_positives=2, u=u)
    ours = fused_pixel_contrast(case.anchors, case.labels, case.contrast,
                                case.contrast_labels, ignore_index=IGNORE, mining="semi-hard",
                                num_negatives=4, num_positives=2, backend="cpu",
                                generator=torch.Generator().manual_seed(21))
    assert abs(ref.item() - ours.item()) < 1e-12


@pytest.mark.parametrize("kwargs", [dict(mining="hardest", num_negatives=4, num_positives=2),
                                    dict(loss="supcon")])
def test_torch_compile_fullgraph(kwargs):
    """The op traces whole (custom ops with fake kernels and registered backward)."""
    case = make_case("bank", n=20, m=50, d=8)
    a = case.anchors.clone().requires_grad_()

    def step(x):
        return fused_pixel_contrast(x, case.labels, case.contrast, case.contrast_labels,
                                    backend="cpu", ignore_index=IGNORE, **kwargs)

    out = torch.compile(step, fullgraph=True)(a)
    (got,) = torch.autograd.grad(out, [a])
    ref = step(a)
    (want,) = torch.autograd.grad(ref, [a])
    # (inductor may fuse the final reduction differently: not bit for bit)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.gpu
@pytest.mark.parametrize("mining", ["hardest", "semi-hard"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_on_the_gpu_matches_the_cpu_kernels(mining, dtype):
    """On CUDA: integer embeddings (exact logits, many ties) select exactly what the CPU
    kernel selects for the same uniforms; the loss and gradients on random data match the
    float64 oracle of the GPU's own selection; no host synchronisation."""
    n, m, d = 70, 300, 24
    labels = torch.randint(0, 5, (n,))
    zl = torch.randint(0, 5, (m,))
    anchors = torch.randint(-1, 2, (n, d)).to(dtype)
    contrast = torch.randint(-1, 2, (m, d)).to(dtype)
    kw = dict(mining=mining, num_negatives=9, num_positives=4, temperature=0.5,
              normalize=False, include_anchors=True, ignore_index=IGNORE, semi_hard_fraction=0.2)
    cpu = selected_columns(anchors.float(), labels, contrast.float(), zl, backend="cpu",
                           generator=torch.Generator().manual_seed(1), **kw)
    u = torch.rand((n, 13), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    from pixcontrast.kernels.mining import mining_select
    dev = torch.device("cuda")
    with torch.cuda.device(dev):
        torch.cuda.set_sync_debug_mode("error")
        try:
            idx, _ = mining_select(anchors.to(dev), labels.to(dev), contrast.to(dev), zl.to(dev),
                                   True, 2.0, IGNORE, False, u.to(dev), mining == "semi-hard",
                                   0.2, 9, 4)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(idx[:, :9].cpu(), cpu[0]) and torch.equal(idx[:, 9:].cpu(), cpu[1])
    case = make_case("bank-grad", n=64, m=500, d=32, dtype=dtype)
    case_gpu = dataclasses.replace(case, anchors=case.anchors.cuda(), labels=case.labels.cuda(),
                                   contrast=case.contrast.cuda(),
                                   contrast_labels=case.contrast_labels.cuda())
    up = torch.randn(())
    ours = _run(case_gpu, "triton", mining=mining, loss="infonce", upstream=up.cuda())
    neg, pos = _select(case_gpu, "triton", mining, 5, 3, seed=11)
    ref = _oracle_on_selection(case, neg.cpu(), pos.cpu(), "infonce", up)
    rtol = 1e-4 if dtype == torch.float32 else 2.0 ** -7
    assert_matches(tuple(None if x is None else x.cpu() for x in ours), ref, rtol, 1e-6)
