"""GPU-only checks of the Triton and CUDA backends (skipped without CUDA).

The same grid as the CPU backends (tests/test_infonce.py) against the float64 oracle, in
fp32 (TF32 off and on), bf16 and fp16; the two GPU backends against each other; no host
synchronisation; CUDA-graph capture; ``torch.compile(fullgraph=True)``; M·D > 2^31.
"""

from __future__ import annotations

import pytest
import torch

from pixcontrast.ops import fused_pixel_contrast, not_supported_reasons
from tests._oracle import (
    IGNORE, assert_large_norms_match, assert_lowprec_matches, assert_matches, fp32_rtol,
    make_case, oracle, run,
)

pytestmark = pytest.mark.gpu

GPU_BACKENDS = ["triton", "cuda"]
MODES = ["self", "bank", "bank+anchors", "bank-grad"]


@pytest.fixture(autouse=True)
def tf32_off():
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def to_cuda(case):
    case.anchors = case.anchors.cuda()
    case.labels = case.labels.cuda()
    if case.contrast is not None:
        case.contrast, case.contrast_labels = case.contrast.cuda(), case.contrast_labels.cuda()
    return case


def needs(backend):
    dummy = torch.empty(1, 8, device="cuda")
    reasons = not_supported_reasons(backend, dummy)
    if reasons:
        pytest.fail(f"backend {backend!r} must run on this GPU machine: {reasons}")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [48, 256, 300])
def test_gpu_backend_matches_oracle(backend, mode, dtype, d):
    needs(backend)
    case = to_cuda(make_case(mode, n=333, m=4099, d=d, classes=19, dtype=dtype))
    up = torch.randn((), device="cuda", dtype=torch.float64)
    ours = run(case, backend=backend, upstream=up)
    ref = oracle(case, upstream=up)
    if dtype == torch.float32:  # TF32 off: 3xTF32 on the tensor cores
        assert_matches(ours, ref, fp32_rtol(d, tensor_cores=True), 1e-6)
    else:
        assert_lowprec_matches(ours, ref, run(case, backend="oracle", upstream=up,
                                              compute_dtype=dtype))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("temperature", [0.01, 0.1, 0.5])
def test_gpu_small_odd_shapes_and_temperatures(backend, mode, temperature):
    needs(backend)
    case = to_cuda(make_case(mode, n=37, m=101, d=20, temperature=temperature))
    up = torch.randn((), device="cuda", dtype=torch.float64)
    rel = fp32_rtol(20, temperature, tensor_cores=True)
    assert_matches(run(case, backend=backend, upstream=up), oracle(case, upstream=up), rel, 1e-6)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_gpu_reductions(backend, reduction):
    needs(backend)
    case = to_cuda(make_case("bank+anchors", n=129, m=517, d=64))
    up = (torch.randn(129, device="cuda", dtype=torch.float64) if reduction == "none"
          else torch.randn((), device="cuda", dtype=torch.float64))
    ours, ref = run(case, reduction, backend=backend, upstream=up), oracle(case, reduction, up)
    assert_matches(ours, ref, fp32_rtol(64, tensor_cores=True), 1e-6)
    if reduction == "none":
        keep = (case.labels != IGNORE) & (ref[0] != 0)
        assert (ours[0][~keep] == 0).all()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("normalize", [True, False])
def test_gpu_large_norms(backend, normalize):
    needs(backend)
    temperature = 0.5 if normalize else 50.0
    case = to_cuda(make_case("bank-grad", n=65, m=301, d=40, scale=300.0, normalize=normalize,
                             temperature=temperature))
    assert_large_norms_match(case, backend,
                             torch.randn((), device="cuda", dtype=torch.float64))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_all_rows_ignored_and_no_positive(backend):
    needs(backend)
    a = torch.randn(40, 32, device="cuda", requires_grad=True)
    y = torch.full((40,), IGNORE, device="cuda")
    bank = torch.randn(100, 32, device="cuda")
    z = torch.randint(0, 3, (100,), device="cuda")
    loss = fused_pixel_contrast(a, y, bank, z, backend=backend)
    loss.backward()
    assert loss.item() == 0 and torch.count_nonzero(a.grad) == 0
    y = torch.full((40,), 7, device="cuda")  # a class absent from the bank: no positive
    a.grad = None
    loss = fused_pixel_contrast(a, y, bank, z, backend=backend)
    loss.backward()
    assert loss.item() == 0 and torch.count_nonzero(a.grad) == 0


TF32_CASES = {
    "bank": dict(mode="bank", n=256, m=8191, d=256, classes=19),
    # Unnormalised (norms ~0.6, τ = 0.1, loss ~4), a learnable contrast, several row blocks:
    # the column backward (on Triton a 64-row tile against the negatives' 128 since v3.2)
    # recomputes the forward's logits; a mismatch adds gradient error that the dense TF32
    # computation (autograd through its own logits) does not have.
    "unnormalised-bank-grad": dict(mode="bank-grad", n=300, m=2000, d=256, classes=7,
                                   normalize=False, temperature=0.1, scale=0.02),
}


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("name", list(TF32_CASES))
def test_gpu_tf32_within_tf32_error(backend, name):
    needs(backend)
    case = to_cuda(make_case(**TF32_CASES[name]))
    up = torch.randn((), device="cuda", dtype=torch.float64)
    ref = oracle(case, upstream=up)
    torch.backends.cuda.matmul.allow_tf32 = True
    ours = run(case, backend=backend, upstream=up)
    dense = run(case, backend="oracle", upstream=up, compute_dtype=torch.float32)
    assert_lowprec_matches(ours, ref, dense, k=4.0, rtol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_cuda_and_triton_agree(dtype, mode):
    needs("cuda")
    needs("triton")
    case = to_cuda(make_case(mode, n=300, m=3001, d=128, classes=19, dtype=dtype))
    up = torch.randn((), device="cuda", dtype=torch.float64)
    a = run(case, backend="cuda", upstream=up)
    b = run(case, backend="triton", upstream=up)
    rtol = 1e-4 if dtype == torch.float32 else 2e-2
    assert_matches(a, b, rtol, 1e-6, what="cuda vs triton: ")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_deterministic(backend):
    needs(backend)
    case = to_cuda(make_case("bank+anchors", n=200, m=5000, d=64, classes=19))
    up = torch.ones((), device="cuda", dtype=torch.float64)
    first, second = run(case, backend=backend, upstream=up), run(case, backend=backend,
                                                                upstream=up)
    for x, y in zip(first, second):
        if x is not None:
            assert torch.equal(x, y)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("mode", ["bank", "bank+anchors", "bank-grad"])
def test_gpu_no_host_sync_and_graph_capture(backend, mode):
    needs(backend)
    case = to_cuda(make_case(mode, n=256, m=4096, d=64, classes=19))
    a = case.anchors.clone().requires_grad_()
    c = case.contrast.clone().requires_grad_(case.contrast_grad)

    def step():
        a.grad = None
        c.grad = None
        loss = fused_pixel_contrast(a, case.labels, c, case.contrast_labels, backend=backend,
                                    **case.kwargs())
        loss.backward()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up (Triton compilation, allocator)
            step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_loss = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph.replay()
    torch.cuda.synchronize()
    ref_loss, ref_ga, _ = oracle(case, upstream=torch.ones((), dtype=torch.float64,
                                                               device="cuda"))
    torch.testing.assert_close(static_loss.double(), ref_loss, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a.grad.double(), ref_ga, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_compile_fullgraph(backend):
    needs(backend)
    torch._dynamo.reset()
    case = to_cuda(make_case("bank-grad", n=64, m=500, d=32))

    def loss_fn(a, c):
        return fused_pixel_contrast(a, case.labels, c, case.contrast_labels, backend=backend,
                                    **case.kwargs())

    compiled = torch.compile(loss_fn, fullgraph=True)
    a = case.anchors.clone().requires_grad_()
    c = case.contrast.clone().requires_grad_()
    loss = compiled(a, c)
    loss.backward()
    ref_loss, ref_ga, ref_gc = oracle(case, upstream=torch.ones((), dtype=torch.float64,
                                                                    device="cuda"))
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a.grad.double(), ref_ga, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(c.grad.double(), ref_gc, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("mode", ["self", "bank+anchors", "bank-grad"])
def test_cuda_opcheck(mode):
    needs("cuda")
    case = to_cuda(make_case(mode, n=13, m=17, d=20))
    c = case.contrast if case.contrast is not None else case.anchors.new_empty((0, 20))
    z = (case.contrast_labels if case.contrast_labels is not None
         else torch.empty(0, dtype=torch.long, device="cuda"))
    self_contrast = mode != "bank-grad"
    args = (case.anchors.clone().requires_grad_(), case.labels, c, z, self_contrast,
            1 / case.temperature, -1, True, True, False)  # need_grad, allow_tf32
    torch.library.opcheck(torch.ops.pixcontrast.infonce_forward.default, args)


def test_cuda_takes_wide_embeddings_triton_does_not():
    """The CUDA backend's products are cuBLAS GEMMs and its row passes loop over D: any D.
    Triton keeps the padded D on chip (≤ 512)."""
    needs("cuda")
    a = torch.randn(8, 600, device="cuda", requires_grad=True)
    y = torch.randint(0, 3, (8,), device="cuda")
    loss = fused_pixel_contrast(a, y, backend="cuda")
    (grad,) = torch.autograd.grad(loss, a)
    ad = a.detach().double().requires_grad_()
    ref = fused_pixel_contrast(ad, y, backend="torch")
    (ref_grad,) = torch.autograd.grad(ref, ad)
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)
    with pytest.raises(RuntimeError, match="triton: embedding dim 600 > 512"):
        fused_pixel_contrast(a, y, backend="triton")


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


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_int64_indexing_beyond_2_31(backend):
    """M·D > 2^31 elements: offsets must be computed in int64."""
    needs(backend)
    d = 64
    m = (2**31) // d + 4097
    bank_labels = torch.randint(0, 19, (m,), device="cuda").sort().values
    bank = torch.randn(m, d, device="cuda", dtype=torch.bfloat16)
    a = torch.randn(64, d, device="cuda", dtype=torch.bfloat16)
    y = torch.randint(0, 19, (64,), device="cuda")
    loss = fused_pixel_contrast(a, y, bank, bank_labels, backend=backend)
    ref = chunked_loss(a, y, bank, bank_labels)
    assert abs(loss.float().item() - ref.item()) <= 2e-3 * abs(ref.item())
    del bank
    torch.cuda.empty_cache()
