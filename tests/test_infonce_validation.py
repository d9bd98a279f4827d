"""Bad input raises a clear error naming the argument; NaN/Inf is reported."""

from __future__ import annotations

import math

import pytest
import torch

from pixcontrast.ops import fused_pixel_contrast


def inputs(n=12, m=20, d=8):
    return (torch.randn(n, d), torch.randint(0, 3, (n,)), torch.randn(m, d),
            torch.randint(0, 3, (m,)))


@pytest.mark.parametrize("backend", ["cpu", "reference", "triton"])
@pytest.mark.parametrize("mutate, exc, match", [
    (lambda a, y, c, z: (a[0], y, c, z), ValueError, r"anchors must be 2-D \[N, D\]"),
    (lambda a, y, c, z: (a.long(), y, c, z), TypeError, "anchors must be a floating-point"),
    (lambda a, y, c, z: (a[:, :0], y, c, z), ValueError, "non-zero embedding dim"),
    (lambda a, y, c, z: (a, y[:-1], c, z), ValueError, r"labels must be 1-D \[N\] with N=12"),
    (lambda a, y, c, z: (a, y.float(), c, z), TypeError, "labels must be an integer"),
    (lambda a, y, c, z: (a, y.bool(), c, z), TypeError, "labels must be an integer"),
    (lambda a, y, c, z: (a, y[:, None], c, z), ValueError, r"labels must be 1-D"),
    (lambda a, y, c, z: (a, y, c[:, :-1], z), ValueError, "contrast has embedding dim D=7"),
    (lambda a, y, c, z: (a, y, c[None], z), ValueError, r"contrast must be 2-D \[M, D\]"),
    (lambda a, y, c, z: (a, y, c.int(), z), TypeError, "contrast must be a floating-point"),
    (lambda a, y, c, z: (a, y, c, z[:-1]), ValueError, r"contrast_labels must be 1-D \[M\] with M=20"),
    (lambda a, y, c, z: (a, y, c, z.double()), TypeError, "contrast_labels must be an integer"),
    (lambda a, y, c, z: (a, y, c, None), ValueError, "contrast_labels is required"),
    (lambda a, y, c, z: (a, y, None, z), ValueError, "contrast_labels was given without"),
    (lambda a, y, c, z: (a, y, c.to("meta"), z), ValueError, "contrast is on meta"),
    (lambda a, y, c, z: (a, y.to("meta"), c, z), ValueError, "labels is on meta"),
    (lambda a, y, c, z: (a.numpy(), y, c, z), TypeError, "anchors must be a torch.Tensor"),
])
def test_bad_tensors(backend, mutate, exc, match):
    with pytest.raises(exc, match=match):
        fused_pixel_contrast(*mutate(*inputs()), backend=backend)


@pytest.mark.parametrize("name", ["temperature", "base_temperature"])
@pytest.mark.parametrize("value", [0.0, -0.1, math.inf, math.nan])
def test_bad_temperatures(name, value):
    with pytest.raises(ValueError, match=f"{name} must be finite and > 0"):
        fused_pixel_contrast(*inputs(), **{name: value})


def test_temperature_must_be_a_number():
    with pytest.raises(TypeError, match="temperature must be a Python float"):
        fused_pixel_contrast(*inputs(), temperature=torch.tensor(0.1))


def test_unknown_reduction_and_backend():
    with pytest.raises(ValueError, match="reduction must be one of"):
        fused_pixel_contrast(*inputs(), reduction="avg")
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        fused_pixel_contrast(*inputs(), backend="cudnn")
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        fused_pixel_contrast(*inputs(), ignore_index=-1.0)


def test_named_backend_that_cannot_run_says_why(monkeypatch):
    with pytest.raises(RuntimeError, match="backend='cuda' cannot run.*need CUDA tensors"):
        fused_pixel_contrast(*inputs(), backend="cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="triton.*TRITON_INTERPRET=1"):
        fused_pixel_contrast(*inputs(), backend="triton")
    a, y, c, z = inputs()
    with pytest.raises(RuntimeError, match="triton: dtype torch.float64 is not supported"):
        fused_pixel_contrast(a.double(), y, c.double(), z, backend="triton")


def test_cuda_backend_on_a_cpu_only_build_says_so():
    """A build without CUDA kernels names that reason, on top of the device mismatch."""
    from pixcontrast.ops import not_supported_reasons
    a, y, c, z = inputs()
    reasons = not_supported_reasons("cuda", a, c)
    assert any("need CUDA tensors, got tensors on cpu" in r for r in reasons)
    has_cuda_kernels = torch._C._dispatch_has_kernel_for_dispatch_key(
        "pixcontrast::infonce_forward", "CUDA")
    missing = "no CUDA kernel for infonce_forward, infonce_backward_columns"
    assert any(missing in r for r in reasons) == (not has_cuda_kernels)
    wide = torch.randn(4, 600)  # the CUDA products are cuBLAS GEMMs: any D (Triton: ≤ 512)
    assert not any("embedding dim" in r for r in not_supported_reasons("cuda", wide))
    assert any("embedding dim 600 > 512" in r for r in not_supported_reasons("triton", wide))
    with pytest.raises(RuntimeError, match="backend='cuda' cannot run these inputs: cuda: "):
        fused_pixel_contrast(a, y, c, z, backend="cuda")


@pytest.mark.parametrize("backend", ["cpu", "reference", "triton"])
@pytest.mark.parametrize("where", ["anchors", "contrast"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_inputs_are_reported(backend, where, bad):
    a, y, c, z = inputs()
    (a if where == "anchors" else c)[3, 2] = bad
    with pytest.raises(RuntimeError, match=f"{where} contains NaN or Inf"):
        fused_pixel_contrast(a, y, c, z, backend=backend)
