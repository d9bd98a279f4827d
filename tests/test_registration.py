"""torch.library registration: opcheck, fake kernels, torch.compile(fullgraph=True)."""

from __future__ import annotations

import re

import pytest
import torch

from pixcontrast.ops import fused_pixel_contrast
from tests._oracle import make_case, oracle

OPS = {
    "cpu": lambda: torch.ops.pixcontrast.infonce_forward.default,
    "triton": lambda: torch.ops.pixcontrast.infonce_forward_triton.default,
}


def op_args(case, self_contrast, need_grad, backend):
    c = case.contrast if case.contrast is not None else case.anchors.new_empty((0, 20))
    z = case.contrast_labels if case.contrast_labels is not None else torch.empty(
        0, dtype=torch.long)
    args = [case.anchors.clone().requires_grad_(need_grad), case.labels, c, z,
            self_contrast, 1 / case.temperature, -1, True, need_grad, False]  # allow_tf32
    return tuple(args)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("mode", ["self", "bank", "bank+anchors"])
def test_opcheck_forward(backend, mode):
    case = make_case(mode, n=13, m=17, d=20)
    self_contrast = mode != "bank"
    torch.library.opcheck(OPS[backend](), op_args(case, self_contrast, True, backend))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("mode", ["self", "bank-grad", "bank+anchors"])
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compile_fullgraph(backend, mode, compiler):
    if compiler == "inductor" and backend == "triton":
        pytest.skip("inductor over the interpreted Triton op adds nothing on CPU")
    torch._dynamo.reset()  # each case compiles the same code object afresh
    case = make_case(mode, n=19, m=31, d=20)

    def loss_fn(a, c):
        return fused_pixel_contrast(a, case.labels, c, case.contrast_labels, backend=backend,
                                    **case.kwargs())

    compiled = torch.compile(loss_fn, fullgraph=True, backend=compiler)
    a = case.anchors.clone().requires_grad_()
    c = None if case.contrast is None else case.contrast.clone().requires_grad_(
        case.contrast_grad)
    loss = compiled(a, c)
    loss.backward()
    ref_loss, ref_ga, ref_gc = oracle(case, upstream=torch.ones(()))
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.grad.double(), ref_ga, rtol=1e-4, atol=1e-6)
    if case.contrast_grad:
        torch.testing.assert_close(c.grad.double(), ref_gc, rtol=1e-4, atol=1e-6)


BACKWARD_OPS = {
    "cpu": lambda: torch.ops.pixcontrast.infonce_backward_columns.default,
    "triton": lambda: torch.ops.pixcontrast.infonce_backward_columns_triton.default,
}


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("mode", ["self", "bank-grad", "bank+anchors"])
def test_opcheck_backward_columns(backend, mode):
    case = make_case(mode, n=13, m=17, d=20)
    self_contrast = mode != "bank-grad"
    fwd_args = op_args(case, self_contrast, False, backend)
    _, lse, pos_sig, num_pos, _ = OPS[backend]()(*fwd_args)
    row_coef = torch.where(num_pos > 0, torch.randn(13) / num_pos.clamp(min=1), 0.0)
    args = [fwd_args[0].detach(), *fwd_args[1:8], lse, pos_sig, row_coef, False]  # allow_tf32
    torch.library.opcheck(BACKWARD_OPS[backend](), tuple(args))


# ------------------------------------------------------------------------------------
# Sampling and memory-bank ops (CUDA kernels; the schemas and fakes are checked on CPU)
# ------------------------------------------------------------------------------------

SCHEMAS = {
    "sampling_run_histogram":
        "pixcontrast::sampling_run_histogram(Tensor run_key, Tensor rank, Tensor cls, "
        "Tensor easy, Tensor valid, int hw) -> Tensor",
    "sampling_select_scatter":
        "pixcontrast::sampling_select_scatter(Tensor cls, Tensor easy, Tensor rank, "
        "Tensor lab, Tensor pix, Tensor pair_of_cls, Tensor kept, Tensor pair_hard, "
        "Tensor pair_easy, Tensor offset, Tensor views, Tensor(a!) out_idx, "
        "Tensor(b!) out_lab, int ignore_index) -> ()",
    "bank_write":
        "pixcontrast::bank_write(Tensor(a!) features, Tensor(b!) labels, Tensor values, "
        "Tensor rows, Tensor keep, Tensor entry_labels) -> ()",
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_sampling_and_bank_schemas(name):
    import pixcontrast.memory_bank  # noqa: F401  (registers the fake kernels)
    import pixcontrast.sampling  # noqa: F401

    op = getattr(torch.ops.pixcontrast, name).default
    assert str(op._schema) == SCHEMAS[name]
    # In-place ops are declared mutable (alias annotations), so functionalisation and
    # torch.compile know what they write.
    mutated = [a.name for a in op._schema.arguments
               if a.alias_info is not None and a.alias_info.is_write]
    assert mutated == {"sampling_run_histogram": [],
                       "sampling_select_scatter": ["out_idx", "out_lab"],
                       "bank_write": ["features", "labels"]}[name]


def test_sampling_and_bank_fake_kernels():
    import pixcontrast.memory_bank  # noqa: F401
    import pixcontrast.sampling  # noqa: F401

    n = 11
    i64 = torch.empty(n, dtype=torch.int64, device="meta")
    b = torch.empty(n, dtype=torch.bool, device="meta")
    counts = torch.ops.pixcontrast.sampling_run_histogram(i64, i64, i64, b, b, 11)
    assert counts.shape == (n, 2) and counts.dtype == torch.int64
    out = torch.empty(5, dtype=torch.int64, device="meta")
    assert torch.ops.pixcontrast.sampling_select_scatter(
        i64, b, i64, i64, i64, i64, b[:3], i64[:3], i64[:3], i64[:3], i64[:1], out,
        out.clone(), -1) is None
    f = torch.empty(6, 4, dtype=torch.bfloat16, device="meta")
    assert torch.ops.pixcontrast.bank_write(f, i64[:6], f[:2], i64[:2], b[:2], i64[:2]) is None


def test_triton_sampling_and_bank_ops_are_registered_like_the_infonce_ones():
    """The Triton launchers of sampling and the bank write are torch.library ops with fake
    kernels (as the InfoNCE ones), with the C++ schemas' signatures and mutations."""
    import pixcontrast.memory_bank  # noqa: F401
    import pixcontrast.sampling  # noqa: F401

    def canonical(schema: str) -> str:  # custom_op infers SymInt and numbered aliases
        return re.sub(r"\(\w+!\)", "(!)", schema.replace("SymInt", "int"))

    for name in ("sampling_run_histogram", "sampling_select_scatter", "bank_write"):
        triton_op = getattr(torch.ops.pixcontrast, name + "_triton").default
        assert (canonical(str(triton_op._schema).replace("_triton(", "("))
                == canonical(SCHEMAS[name]))
    n, hw = 12, 6
    run_key = torch.arange(n) // 3
    rank = torch.arange(n) % 3
    cls = torch.arange(n) // 2
    easy = torch.rand(n) < 0.5
    valid = torch.rand(n) < 0.8
    torch.library.opcheck(torch.ops.pixcontrast.sampling_run_histogram_triton.default,
                          (run_key, rank, cls, easy, valid, hw))
    f = torch.randn(6, 4)
    lab = torch.full((6,), -1)
    args = (f, lab, torch.randn(3, 4), torch.tensor([0, 4, 2]),
            torch.tensor([True, False, True]), torch.tensor([1, 2, 3]))
    torch.library.opcheck(torch.ops.pixcontrast.bank_write_triton.default, args)
