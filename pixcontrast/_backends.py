"""Where the Triton kernels can run: one answer for every op that has them."""

from __future__ import annotations

import importlib.util
import os

import torch

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
