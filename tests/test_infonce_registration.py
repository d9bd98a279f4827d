"""The InfoNCE ops' torch.library registration: opcheck, fake kernels,
torch.compile(fullgraph=True); with the SupCon switch (``supcon``, the ops' last argument)
off and on."""

from __future__ import annotations

import pytest
import torch

from pixcontrast.ops import fused_pixel_contrast
from tests._oracle import make_case, oracle, run

OPS = {
    "cpu": lambda: torch.ops.pixcontrast.infonce_forward.default,
    "triton": lambda: torch.ops.pixcontrast.infonce_forward_triton.default,
}


def op_args(case, self_contrast, need_grad, backend, supcon=False):
    c = case.contrast if case.contrast is not None else case.anchors.new_empty((0, 20))
    z = case.contrast_labels if case.contrast_labels is not None else torch.empty(
        0, dtype=torch.long)
    args = [case.anchors.clone().requires_grad_(need_grad), case.labels, c, z,
            self_contrast, 1 / case.temperature, -1, True, need_grad, False]  # allow_tf32
    if supcon:  # Triton: check_finite comes before it
        args += [False, True] if backend == "triton" else [True]
    return tuple(args)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("mode", ["self", "bank", "bank+anchors"])
@pytest.mark.parametrize("supcon", [False, True])
def test_opcheck_forward(backend, mode, supcon):
    case = make_case(mode, n=13, m=17, d=20)
    self_contrast = mode != "bank"
    torch.library.opcheck(OPS[backend](), op_args(case, self_contrast, True, backend, supcon))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("mode", ["self", "bank-grad", "bank+anchors"])
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("loss_name", ["infonce", "supcon"])
def test_compile_fullgraph(backend, mode, compiler, loss_name):
    if compiler == "inductor" and backend == "triton":
        pytest.skip("inductor over the interpreted Triton op adds nothing on CPU")
    torch._dynamo.reset()  # each case compiles the same code object afresh
    case = make_case(mode, n=19, m=31, d=20)

    def loss_fn(a, c):
        return fused_pixel_contrast(a, case.labels, c, case.contrast_labels, backend=backend,
                                    loss=loss_name, **case.kwargs())

    compiled = torch.compile(loss_fn, fullgraph=True, backend=compiler)
    a = case.anchors.clone().requires_grad_()
    c = None if case.contrast is None else case.contrast.clone().requires_grad_(
        case.contrast_grad)
    loss = compiled(a, c)
    loss.backward()
    if loss_name == "supcon":  # the dense reference backend in float64
        ref_loss, ref_ga, ref_gc = run(case, backend="torch", upstream=torch.ones(()),
                                       double=True, loss="supcon")
    else:
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
@pytest.mark.parametrize("supcon", [False, True])
def test_opcheck_backward_columns(backend, mode, supcon):
    case = make_case(mode, n=13, m=17, d=20)
    self_contrast = mode != "bank-grad"
    fwd_args = op_args(case, self_contrast, False, backend, supcon)
    _, lse, pos_sig, num_pos, _ = OPS[backend]()(*fwd_args)
    row_coef = torch.where(num_pos > 0, torch.randn(13) / num_pos.clamp(min=1), 0.0)
    args = [fwd_args[0].detach(), *fwd_args[1:8], lse, pos_sig, row_coef, False]  # allow_tf32
    if supcon:
        args.append(True)
    torch.library.opcheck(BACKWARD_OPS[backend](), tuple(args))
