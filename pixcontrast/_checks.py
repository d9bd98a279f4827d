"""Input checks shared by the ops, free of host synchronisation."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def assert_finite(x: Tensor, message: str) -> None:
    """Raise ``message`` if ``x`` holds NaN or Inf, without a host synchronisation.

    On the CPU it raises at once; on CUDA it is a device-side assert, so a NaN stops the
    step instead of silently poisoning the weights or the bank. The max-abs norm is one
    reduction that propagates NaN and Inf (``torch.isfinite(x).all()`` would allocate ~1.7×
    the input in temporaries: 325 MB at the paper's bank size). An empty tensor has nothing
    to check (its inf-norm is undefined).
    """
    if x.numel() == 0:  # static: the shape, not a value
        return
    peak = torch.linalg.vector_norm(x.detach(), ord=math.inf)
    torch._assert_async(torch.isfinite(peak), message)
