"""The public functional API: re-exports of each op's module.

``fused_pixel_contrast`` (pixcontrast/infonce.py: the InfoNCE op, its backends and the
dense reference) and ``sample_anchors`` (pixcontrast/sampling.py). The memory bank and the
loss modules are ``pixcontrast.MemoryBank``, ``PixelContrastLoss`` and ``ContrastCELoss``.
"""

from __future__ import annotations

from pixcontrast.infonce import BACKENDS, fused_pixel_contrast, not_supported_reasons
from pixcontrast.sampling import sample_anchors

__all__ = ["fused_pixel_contrast", "sample_anchors", "not_supported_reasons", "BACKENDS"]
