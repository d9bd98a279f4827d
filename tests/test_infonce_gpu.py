"""GPU-only checks of the Triton backend (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from tests._oracle import assert_lowprec_matches, assert_matches, make_case, oracle, run

pytestmark = pytest.mark.gpu


def to_cuda(case):
    case.anchors = case.anchors.cuda()
    case.labels = case.labels.cuda()
    if case.contrast is not None:
        case.contrast, case.contrast_labels = case.contrast.cuda(), case.contrast_labels.cuda()
    return case


@pytest.mark.parametrize("mode", ["self", "bank", "bank+anchors", "bank-grad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [48, 256])
def test_triton_on_gpu_matches_oracle(mode, dtype, d):
    torch.backends.cuda.matmul.allow_tf32 = False
    case = to_cuda(make_case(mode, n=333, m=4099, d=d, classes=19, dtype=dtype))
    up = torch.randn((), device="cuda", dtype=torch.float64)
    ours = run(case, backend="triton", upstream=up)
    ref = oracle(case, upstream=up)
    if dtype == torch.float32:
        assert_matches(ours, ref, 2e-5, 1e-6)
    else:
        assert_lowprec_matches(ours, ref, run(case, backend="oracle", upstream=up,
                                              compute_dtype=dtype))


def test_triton_tf32_within_tf32_error():
    case = to_cuda(make_case("bank", n=256, m=8191, d=256, classes=19))
    up = torch.ones((), device="cuda", dtype=torch.float64)
    ref = oracle(case, upstream=up)
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        ours = run(case, backend="triton", upstream=up)
        dense = run(case, backend="oracle", upstream=up, compute_dtype=torch.float32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    assert_lowprec_matches(ours, ref, dense, k=4.0, rtol=2e-3)


def chunked_loss(a, y, bank, z, tau=0.1, base=0.07, chunk=1 << 20):
    """Exact loss over a huge bank in fp32, one chunk of logits at a time."""
    import torch.nn.functional as F
    ah = F.normalize(a.float(), dim=1)
    chunks = [(F.normalize(bank[s:s + chunk].float(), dim=1), z[s:s + chunk])
              for s in range(0, bank.shape[0], chunk)]
    lse = torch.full((a.shape[0],), float("-inf"), device=a.device)
    for c, zc in chunks:
        logits = ah @ c.T / tau
        lse = torch.logaddexp(lse, torch.logsumexp(
            logits.masked_fill(y[:, None] == zc[None, :], float("-inf")), 1))
    total = torch.zeros_like(lse)
    npos = torch.zeros_like(lse)
    for c, zc in chunks:
        logits = ah @ c.T / tau
        pos = y[:, None] == zc[None, :]
        total += torch.where(pos, F.softplus(lse[:, None] - logits), 0).sum(1)
        npos += pos.sum(1)
    return tau / base * (total / npos).mean()


def test_triton_int64_indexing_beyond_2_31():
    """M·D > 2^31 elements: offsets must be computed in int64."""
    from pixcontrast.ops import fused_pixel_contrast
    d = 64
    m = (2**31) // d + 4097
    bank_labels = torch.randint(0, 19, (m,), device="cuda").sort().values
    bank = torch.randn(m, d, device="cuda", dtype=torch.bfloat16)
    a = torch.randn(64, d, device="cuda", dtype=torch.bfloat16)
    y = torch.randint(0, 19, (64,), device="cuda")
    loss = fused_pixel_contrast(a, y, bank, bank_labels, backend="triton")
    ref = chunked_loss(a, y, bank, bank_labels)
    assert abs(loss.float().item() - ref.item()) <= 2e-3 * abs(ref.item())
