"""pixcontrast: fused kernels for the pixel-wise contrastive loss of Wang et al. (ICCV 2021).

    from pixcontrast.ops import fused_pixel_contrast
    loss = fused_pixel_contrast(anchors, labels, bank, bank_labels, temperature=0.1)
"""

import torch  # noqa: F401  (loads libtorch before pixcontrast._C)

from pixcontrast.losses import ContrastCELoss, PixelContrastLoss
from pixcontrast.memory_bank import MemoryBank
from pixcontrast.ops import fused_pixel_contrast, not_supported_reasons, sample_anchors

__version__ = "0.1.0"
__all__ = ["fused_pixel_contrast", "sample_anchors", "MemoryBank", "PixelContrastLoss",
           "ContrastCELoss", "not_supported_reasons", "__version__"]
