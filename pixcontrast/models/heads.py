"""Projection heads and small building blocks shared by the segmentation models.

The projection head maps backbone features ``[B, C, h, w]`` to pixel embeddings
``[B, proj_dim, h, w]``, L2-normalised along the channel dimension, as in Wang et al.
(ICCV 2021, "convmlp": 1x1 conv -> BN -> ReLU -> 1x1 conv; "linear": one 1x1 conv).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PROJ_HEADS = ("convmlp", "linear")


class ProjectionHead(nn.Module):
    """Pixel projection head.

    Args:
        in_channels: channels C of the backbone features.
        proj_dim: embedding dimension D.
        kind: ``"convmlp"`` (Conv1x1 C->C, BN, ReLU, Conv1x1 C->D) or ``"linear"``
            (Conv1x1 C->D).

    ``forward(x[B, C, h, w]) -> [B, D, h, w]`` with unit L2 norm per pixel (same dtype as x).
    """

    def __init__(self, in_channels: int, proj_dim: int = 256, kind: str = "convmlp") -> None:
        super().__init__()
        if kind not in PROJ_HEADS:
            raise ValueError(f"unknown proj_head {kind!r}; valid: {', '.join(PROJ_HEADS)} or None")
        if proj_dim <= 0:
            raise ValueError(f"proj_dim must be positive, got {proj_dim}")
        self.kind = kind
        self.in_channels = in_channels
        self.proj_dim = proj_dim
        if kind == "convmlp":
            self.proj = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 1),
                nn.BatchNorm2d(in_channels),
                nn.ReLU(inplace=True),
                nn.Conv2d(in_channels, proj_dim, 1),
            )
        else:
            self.proj = nn.Conv2d(in_channels, proj_dim, 1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(x), p=2.0, dim=1)


def build_proj_head(in_channels: int, proj_dim: int, kind: str | None) -> ProjectionHead | None:
    """The projection head, or None when ``proj_dim == 0`` or ``kind is None`` (no embeddings)."""
    if kind is None or proj_dim == 0:
        return None
    return ProjectionHead(in_channels, proj_dim, kind)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, *, bias: bool = False,
                 padding: int | None = None, dilation: int = 1) -> nn.Sequential:
    """Conv -> BN -> ReLU (``[B, in, h, w] -> [B, out, h, w]``)."""
    if padding is None:
        padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation,
                  bias=bias),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) convs with zero bias; BN/GN weight 1, bias 0.

    This is the torchvision ResNet and HRNet-ImageNet initialisation.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module | None) -> int:
    """Number of parameters (all, trainable or not) of a module; 0 for None."""
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters())
