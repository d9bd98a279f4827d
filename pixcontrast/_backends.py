"""Where the Triton and CUDA kernels can run: one answer for every op that has them."""

from __future__ import annotations

import importlib.util
import os

import torch

from pixcontrast._extension import _BUILD_HINT, extension_available, has_kernels

HAS_TRITON = importlib.util.find_spec("triton") is not None


def triton_reasons(device: torch.device) -> list[str]:
    """Why the Triton kernels cannot run on ``device`` (empty list: they can)."""
    reasons = []
    if not HAS_TRITON:
        reasons.append("triton: the triton package is not installed")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        reasons.append("triton: CPU tensors run only under TRITON_INTERPRET=1 "
                       "(the Triton interpreter, meant for testing)")
    elif device.type not in ("cpu", "cuda"):
        reasons.append(f"triton: tensors on {device} are not supported")
    return reasons


def torch_or_triton(backend: str, device: torch.device, what: str) -> str:
    """Resolve ``"auto"`` (Triton on CUDA when installed) or check an explicit ``"triton"``."""
    if backend == "auto":
        return "triton" if device.type == "cuda" and HAS_TRITON else "torch"
    if backend == "triton":
        reasons = triton_reasons(device)
        if reasons:
            raise RuntimeError(f"{what}: backend 'triton' cannot run: " + "; ".join(reasons))
    return backend


def missing_cuda_kernels(ops: tuple[str, ...]) -> list[str] | None:
    """The ops among ``pixcontrast::<op>`` for ``ops`` without a CUDA kernel, or ``None``
    when the extension is not built. Call it once, at import: the dispatcher query does not
    trace under ``torch.compile`` (fullgraph), a module constant does."""
    if not extension_available():
        return None
    return [op for op in ops if not has_kernels("CUDA", op)]


def cuda_reasons(device: torch.device, missing: list[str] | None) -> list[str]:
    """Why the CUDA kernels cannot run on ``device`` (empty list: they can); ``missing`` is
    :func:`missing_cuda_kernels`' answer for the ops needed."""
    reasons = []
    if device.type != "cuda":
        reasons.append(f"cuda: the CUDA kernels need CUDA tensors, got tensors on {device}")
    if missing is None:
        reasons.append(f"cuda: the C++ extension pixcontrast._C is not built; {_BUILD_HINT}")
    elif missing:
        reasons.append(
            "cuda: pixcontrast._C has no CUDA kernel for " + ", ".join(missing)
            + f" (built against a torch without CUDA, running {torch.__version__}, or "
            f"without nvcc, or from older sources); rebuild it with a CUDA build of torch "
            f"and nvcc present: `pip install --no-build-isolation -e .`")
    return reasons


def require_cuda(device: torch.device, missing: list[str] | None, what: str) -> None:
    """Raise a RuntimeError with every reason when an explicit ``backend="cuda"`` cannot
    run; never fall back silently."""
    reasons = cuda_reasons(device, missing)
    if reasons:
        raise RuntimeError(f"{what}: backend 'cuda' cannot run: " + "; ".join(reasons))


@torch.compiler.assume_constant_result
def cuda_matmul_allows_tf32() -> bool:
    """Whether fp32 matmuls on CUDA may use TF32, as ``torch.matmul`` decides it.

    A constant for ``torch.compile`` (dynamo cannot trace the precision getter; its global
    state guard recompiles when the TF32 setting changes).

    Read through ``torch.backends.cuda.matmul.fp32_precision`` where it exists (torch ≥ 2.9):
    once a program has set the new API, reading the legacy ``allow_tf32`` flag raises
    ("mix of the legacy and new APIs"). ``"none"`` inherits ``torch.backends.fp32_precision``,
    whose own ``"none"`` means IEEE, PyTorch's default.
    """
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision is None:  # torch < 2.9
        return bool(matmul.allow_tf32)
    if precision == "none":
        precision = getattr(torch.backends, "fp32_precision", "none")
    return precision == "tf32"
