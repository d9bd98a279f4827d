"""The Triton InfoNCE launchers (kernels/infonce.py) called directly, against the float64
oracle's per-row terms, on inputs built to reach every path of the rebuilt kernels:

* the positives work list: classes with more rows than a row block, classes whose column
  range spans several items, any target number of items, a bank in any order, columns of
  a class no anchor has, ignored rows and columns, labels far beyond int32;
* the negatives' split count (any number of splits merges to the same lse);
* the fixed-shift fast path (normalise, τ >= 0.03) and the general path with its lazy
  rescale (logits that grow tile after tile, so a row's max moves many times);
* the plan's host-side bounds (the workspace the kernels write into) and determinism;
* the finite check fused into the prep's read of each input.

Under the interpreter the tiles are 16 × 16, so test-sized inputs already give many row
blocks, tiles, splits and items; on a GPU (``device="cuda"``, skipped without one) the same
cases run the compiled kernels with the GPU's tiles (3xTF32 dots, MUFU log2).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pixcontrast.infonce import reference_row_terms
from tests._oracle import fp32_rtol

K = pytest.importorskip("pixcontrast.kernels.infonce")
IGNORE = -1


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    return torch.device(request.param)


def rtol_for(device, d, temperature=0.1):
    return fp32_rtol(d, temperature, tensor_cores=device.type == "cuda")


def on(device, *tensors):
    return [t.to(device) for t in tensors]


def imbalanced_case(n: int, m: int, d: int, *, big_labels: bool = False, sort_bank: bool,
                    scale: float = 1.0, self_only: bool = False):
    """One dominant class (most bank columns, ~1/3 of the anchors), a long tail, ignored
    rows and columns, and bank columns of a class no anchor has."""
    classes = 6
    y = torch.randint(0, classes, (n,))
    y[torch.rand(n) < 0.35] = 0
    y[torch.rand(n) < 0.1] = IGNORE
    z = torch.randint(0, classes + 2, (m,))  # classes 6, 7: no anchor has them
    z[torch.rand(m) < 0.5] = 0
    z[torch.rand(m) < 0.1] = IGNORE
    if sort_bank:
        z = z.sort().values
    centers = torch.randn(classes + 2, d, dtype=torch.float64) * 1.5
    a = (centers[y.clamp(min=0)] + torch.randn(n, d, dtype=torch.float64)) * scale
    c = (centers[z.clamp(min=0)] + torch.randn(m, d, dtype=torch.float64)) * scale
    if big_labels:  # int64 labels far beyond int32: the keys must still match exactly
        offset = 3 * 2**40
        y = torch.where(y == IGNORE, y, y * 2**33 + offset)
        z = torch.where(z == IGNORE, z, z * 2**33 + offset)
    if self_only:
        c, z = c[:0], z[:0]
    return a.float(), y, c.float(), z


def oracle_rows(a, y, c, z, self_contrast, inv_t, normalize):
    """Per-row terms in float64 and the row gradient d row_loss_i / d a_i (columns held
    constant: a separate, detached copy of the anchors serves as the self columns)."""
    a64 = a.double().requires_grad_()
    cols = [c.double()]
    col_labels = [z]
    if self_contrast:
        cols.insert(0, a.double())
        col_labels.insert(0, y)
    # The reference treats the anchors as self columns itself; here the self columns are
    # a constant copy, so the gradient is the row term only.
    c_all, z_all = torch.cat(cols), torch.cat(col_labels)
    n = a.shape[0]
    ah = F.normalize(a64, dim=1) if normalize else a64
    ch = F.normalize(c_all, dim=1) if normalize else c_all
    s = ah @ ch.T * inv_t
    valid = (y != IGNORE)[:, None] & (z_all != IGNORE)[None, :]
    if self_contrast:
        eye = torch.zeros_like(valid)
        eye[:, :n] = torch.eye(n, dtype=torch.bool)
        valid &= ~eye
    same = y[:, None] == z_all[None, :]
    pos, neg = valid & same, valid & ~same
    has_neg = neg.any(1)
    lse = torch.logsumexp(torch.where(has_neg[:, None], s.masked_fill(~neg, float("-inf")),
                                      0.0), 1)
    lse = torch.where(has_neg, lse, float("-inf"))
    x = lse[:, None] - s
    num_pos = pos.sum(1).double()
    row_loss = torch.where(pos, F.softplus(x), 0.0).sum(1) / num_pos.clamp(min=1)
    pos_sig = torch.where(pos, torch.sigmoid(x), 0.0).sum(1)
    (row_grad,) = torch.autograd.grad(row_loss.sum(), a64)
    # Cross-check this oracle against the library's reference (same terms, other code).
    ref = reference_row_terms(a.double(), y, c.double(), z, self_contrast, inv_t, IGNORE,
                              normalize)
    for mine, theirs in zip((row_loss, lse, pos_sig, num_pos), ref):
        torch.testing.assert_close(mine.detach(), theirs, rtol=1e-12, atol=1e-12)
    return row_loss.detach(), lse.detach(), pos_sig.detach(), num_pos, row_grad


def assert_rows_match(ours, ref, rtol):
    names = ("row_loss", "lse", "pos_sig", "num_pos", "row_grad")
    for name, x, r in zip(names, ours, ref):
        x, r = x.double().cpu(), r.double().cpu()
        finite = torch.isfinite(r)
        assert torch.equal(torch.isfinite(x), finite), f"{name}: -inf pattern differs"
        if name == "num_pos":
            assert torch.equal(x, r), name
            continue
        scale = r[finite].abs().max().item() if finite.any() else 0.0
        err = (x[finite] - r[finite]).abs().max().item() if finite.any() else 0.0
        assert err <= 1e-6 + rtol * scale, f"{name}: max error {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("num_items", [1, 2, 7, 64])
@pytest.mark.parametrize("mode", ["bank", "bank+anchors", "self"])
@pytest.mark.parametrize("sort_bank", [True, False])
def test_any_positives_work_split_matches_oracle(num_items, mode, sort_bank, device):
    a, y, c, z = imbalanced_case(70, 150, 24, sort_bank=sort_bank, big_labels=num_items == 7,
                                 self_only=mode == "self")
    self_contrast = mode != "bank"
    ours = K.infonce_forward(*on(device, a, y, c, z), self_contrast, 10.0, IGNORE, True, True,
                             num_items=num_items, num_splits=3)
    assert_rows_match(ours, oracle_rows(a, y, c, z, self_contrast, 10.0, True),
                      rtol_for(device, 24))


@pytest.mark.parametrize("num_splits", [1, 2, 5, 40])
def test_any_negatives_split_matches_oracle(num_splits, device):
    a, y, c, z = imbalanced_case(40, 300, 20, sort_bank=bool(torch.rand(()) < 0.5))
    ours = K.infonce_forward(*on(device, a, y, c, z), True, 10.0, IGNORE, True, True,
                             num_splits=num_splits)
    assert_rows_match(ours, oracle_rows(a, y, c, z, True, 10.0, True), rtol_for(device, 20))


@pytest.mark.parametrize("temperature", [0.5, 0.03, 0.0299, 0.01])
@pytest.mark.parametrize("normalize", [True, False])
def test_fast_and_general_paths_match_oracle(temperature, normalize, device):
    scale = 1.0 if normalize else 0.3
    a, y, c, z = imbalanced_case(45, 200, 20, sort_bank=False, scale=scale)
    inv_t = 1.0 / temperature
    assert K._is_fast(normalize, inv_t) == (normalize and temperature >= 0.03)
    ours = K.infonce_forward(*on(device, a, y, c, z), True, inv_t, IGNORE, normalize, True)
    rtol = rtol_for(device, 20, temperature) * (1 if normalize else 10)
    assert_rows_match(ours, oracle_rows(a, y, c, z, True, inv_t, normalize), rtol)


def test_lazy_rescale_with_growing_logits(device):
    """Unnormalised, columns ordered by growing norm: every tile raises the rows' max, by
    more than the rescale threshold many times over a split."""
    n, m, d = 30, 400, 16
    y = torch.randint(0, 3, (n,))
    z = torch.randint(0, 3, (m,))
    direction = torch.randn(d)
    a = direction + 0.3 * torch.randn(n, d)
    c = (direction + 0.3 * torch.randn(m, d)) * torch.linspace(0.1, 3.0, m)[:, None]
    inv_t = 4.0  # logits up to ~4·3·|direction|² ≈ 200: tens of rescales
    ours = K.infonce_forward(*on(device, a, y, c, z), False, inv_t, IGNORE, False, True,
                             num_splits=2)
    s = a.double() @ c.double().T * inv_t
    growth = s[:, -16:].max(1).values - s[:, :16].max(1).values
    assert growth.min() > 4 * K._RESCALE_THRESHOLD.value  # every row's max moves many times
    ref = oracle_rows(a, y, c, z, False, inv_t, False)
    assert_rows_match(ours, ref, 10 * rtol_for(device, 16))


def test_column_backward_matches_oracle_on_imbalanced_classes(device):
    a, y, c, z = imbalanced_case(50, 180, 24, sort_bank=False, big_labels=True)
    a64 = a.double().requires_grad_()
    c64 = c.double().requires_grad_()
    row_loss, lse, pos_sig, num_pos = reference_row_terms(a64, y, c64, z, True, 10.0, IGNORE,
                                                          True)
    weights = torch.randn(50, dtype=torch.float64)
    ga, gc = torch.autograd.grad((weights * row_loss).sum(), (a64, c64))
    args = on(device, a, y, c, z)
    _, lse_k, sig_k, npos_k, row_grad = K.infonce_forward(*args, True, 10.0, IGNORE, True, True)
    w = weights.float().to(device)
    coef = torch.where(npos_k > 0, w / npos_k.clamp(min=1), 0.0)
    gc_k, ga_cols = K.infonce_backward_columns(*args, True, 10.0, IGNORE, True, lse_k, sig_k,
                                               coef)
    ga_k = w[:, None] * row_grad + ga_cols
    for name, x, r in (("anchors", ga_k, ga), ("contrast", gc_k, gc)):
        err = (x.double().cpu() - r).abs().max().item()
        bound = 1e-6 + rtol_for(device, 24) * r.abs().max().item()
        assert err <= bound, f"{name}: {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("row_groups", [2, 3, 50])
@pytest.mark.parametrize("mode", ["self", "bank+anchors"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("supcon", [False, True])
def test_column_backward_over_row_groups_matches_oracle(row_groups, mode, normalize, supcon,
                                                        device):
    """Each column tile's sum over the anchor row blocks split over groups (fp32 partials,
    merged in order with the normalisation backprop): 70 rows are 5 row blocks under the
    interpreter, so 2, 3 and 50 give 2, 3 and 5 groups. Against the float64 oracle, the
    same with one group, and deterministic."""
    scale = 1.0 if normalize else 0.3
    a, y, c, z = imbalanced_case(70, 90, 20, sort_bank=False, scale=scale,
                                 self_only=mode == "self")
    a64 = a.double().requires_grad_()
    c64 = c.double().requires_grad_()
    weights = torch.randn(70, dtype=torch.float64)
    if supcon:
        from pixcontrast.mining import mining_reference
        row_loss = mining_reference(a64, y, c64 if c.shape[0] else None,
                                    z if c.shape[0] else None, temperature=0.1,
                                    base_temperature=0.1, ignore_index=IGNORE,
                                    normalize=normalize, include_anchors=c.shape[0] > 0,
                                    reduction="none", loss="supcon")
    else:
        row_loss = reference_row_terms(a64, y, c64, z, True, 10.0, IGNORE, normalize)[0]
    ga, gc = torch.autograd.grad((weights * row_loss).sum(), (a64, c64), allow_unused=True)
    gc = torch.zeros_like(c64) if gc is None else gc
    args = on(device, a, y, c, z)
    _, lse, sig, npos, row_grad = K.infonce_forward(*args, True, 10.0, IGNORE, normalize,
                                                    True, supcon=supcon)
    w = weights.float().to(device)
    coef = torch.where(npos > 0, w / npos.clamp(min=1), 0.0)
    grads = [K.infonce_backward_columns(*args, True, 10.0, IGNORE, normalize, lse, sig, coef,
                                        supcon=supcon, row_groups=g)
             for g in (row_groups, row_groups, 1)]
    for x, x_again in zip(grads[0], grads[1]):
        assert torch.equal(x, x_again)
    gc_k, ga_cols = grads[0]
    rtol = rtol_for(device, 20) * (1 if normalize else 10)
    for name, x, r in (("anchors", w[:, None] * row_grad + ga_cols, ga), ("contrast", gc_k, gc),
                       ("columns vs one group", ga_cols, grads[2][1].double().cpu())):
        if r.numel() == 0:  # self mode: no contrast rows
            continue
        err = (x.double().cpu() - r).abs().max().item()
        bound = 1e-6 + rtol * r.abs().max().item()
        assert err <= bound, f"{name}: {err:.3g} > {bound:.3g}"


def test_row_groups_plan():
    """One group when the column tiles fill the machine, ~programs/tiles otherwise, never
    an empty group, the fp32 partials within the workspace cap."""
    dev = torch.device("cpu")
    assert K._plan_row_groups(100, 1600, 1024, 256, 16, dev, None) == (1, 64)
    assert K._plan_row_groups(1, 16, 64, 256, 16, dev, None) == (2, 2)
    # partials of 2 groups would pass the 32 MB cap: one group
    assert K._plan_row_groups(1, 20_000, 64, 256, 16, dev, None) == (1, 4)
    assert K._plan_row_groups(3, 40, 80, 16, 16, dev, 4) == (3, 2)
    assert K._plan_row_groups(3, 40, 80, 16, 16, dev, 9) == (5, 1)
    with pytest.raises(ValueError, match="row_groups must be >= 1"):
        K._plan_row_groups(3, 40, 80, 16, 16, dev, 0)


@pytest.mark.parametrize("elem_size,allow_tf32,n", [
    (4, True, 150), (4, True, 300), (4, False, 150), (2, False, 300)])
def test_gpu_tile_configs_match_oracle(elem_size, allow_tf32, n, monkeypatch):
    """The GPU's tile configurations (``_gpu_config``: TF32's 128-row negatives with the
    column backward at 64 rows and positives tiles narrower than the negatives', 3xTF32's
    64-row tiles, bf16's) run under the interpreter on fp32 inputs: forward rows and both
    column gradients against the float64 oracle. (On a GPU the real launches run them.)"""
    if not K._interpreting():
        pytest.skip("runs the GPU tiles under the Triton interpreter")
    cfg = K._gpu_config(64, elem_size, n, allow_tf32)
    monkeypatch.setattr(K, "_config", lambda *args, **kwargs: cfg)
    a, y, c, z = imbalanced_case(n, 500, 40, sort_bank=False)
    a64, c64 = a.double().requires_grad_(), c.double().requires_grad_()
    weights = torch.randn(n, dtype=torch.float64)
    rows = reference_row_terms(a64, y, c64, z, True, 10.0, IGNORE, True)
    ga, gc = torch.autograd.grad((weights * rows[0]).sum(), (a64, c64))
    ours = K.infonce_forward(a, y, c, z, True, 10.0, IGNORE, True, True, num_items=5)
    assert_rows_match(ours, oracle_rows(a, y, c, z, True, 10.0, True), 1e-5)
    w = weights.float()
    coef = torch.where(ours[3] > 0, w / ours[3].clamp(min=1), 0.0)
    gc_k, ga_cols = K.infonce_backward_columns(a, y, c, z, True, 10.0, IGNORE, True, ours[1],
                                               ours[2], coef)
    for name, x, r in (("anchors", w[:, None] * ours[4] + ga_cols, ga), ("contrast", gc_k, gc)):
        err = (x.double() - r).abs().max().item()
        assert err <= 1e-6 + 1e-5 * r.abs().max().item(), f"{name}: {err:.3g}"


@pytest.mark.parametrize("target", [1, 3, 17, 200])
def test_positives_plan_stays_inside_its_bounds(target):
    """Every item's partial rows fit the host-sized workspace; the items of each class
    block cover its column tiles exactly once."""
    a, y, c, z = imbalanced_case(90, 500, 8, sort_bank=bool(torch.rand(()) < 0.5))
    cfg = K._config(8, a.device, 4, a.shape[0])
    prep = K._prepare(a, y, 10.0, IGNORE, True, cfg)
    segments = K._segments(prep, a, y, c, z, True, IGNORE, True, cfg)
    plan = K._plan_positives(prep, segments, cfg, a.device, target)
    s_count, n = len(segments), a.shape[0]
    num_items = int(plan.bounds[-1])
    assert num_items <= plan.item_owner.shape[0]
    owner = plan.item_owner[:num_items]
    # One wave: no more items than programs unless there are more blocks than programs.
    assert num_items <= max(target, owner.unique().numel()), (num_items, target)
    rows = owner % n
    nrows = plan.block_end[rows] - rows
    assert int((plan.item_base[:num_items] + nrows).max()) <= plan.workspace_rows
    tpi = int(plan.tiles_per_item)
    for s in range(s_count):
        mine = (owner // n) == s
        for r in rows[mine].unique().tolist():
            chunks = plan.item_chunk[:num_items][mine & (rows == r)].sort().values
            tiles = -(-int(plan.col_end[s][r] - plan.col_begin[s][r]) // cfg.pos_block_m)
            assert chunks.tolist() == list(range(-(-tiles // tpi)))


def test_deterministic(device):
    args = on(device, *imbalanced_case(60, 250, 20, sort_bank=False))
    first = K.infonce_forward(*args, True, 10.0, IGNORE, True, True, num_items=5)
    second = K.infonce_forward(*args, True, 10.0, IGNORE, True, True, num_items=5)
    for x, w in zip(first, second):
        assert torch.equal(x, w)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("where", ["anchors", "contrast"])
def test_finite_check_in_the_norm_pass(where, normalize):
    """NaN/Inf anywhere in a row is reported by the prep's read, with or without the norms
    (normalize=False reads the rows only for the check); huge finite values (whose squares
    overflow) are not; check_finite=False checks nothing. CPU only: on CUDA the report is a
    device-side assert, which ends the process's CUDA context."""
    a, y, c, z = imbalanced_case(20, 40, 20, sort_bank=True)
    huge = a.clone()
    huge[1, 3] = 3e38  # finite; its square is inf
    K.infonce_forward(huge, y, c, z, True, 10.0, IGNORE, normalize, False, check_finite=True)
    for bad in (float("nan"), float("inf"), float("-inf")):
        x = (a if where == "anchors" else c).clone()
        x[int(torch.randint(0, x.shape[0], ())), int(torch.randint(0, 20, ()))] = bad
        args = (x, y, c, z) if where == "anchors" else (a, y, x, z)
        with pytest.raises(RuntimeError, match=f"pixcontrast: {where} contains NaN or Inf"):
            K.infonce_forward(*args, True, 10.0, IGNORE, normalize, False, check_finite=True)
        K.infonce_forward(*args, True, 10.0, IGNORE, normalize, False, check_finite=False)
