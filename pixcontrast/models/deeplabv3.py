"""DeepLabV3 (Chen et al., 2017) on a dilated ResNet, with a pixel projection head.

Module names follow torchvision's ``segmentation.deeplabv3`` (``backbone``, ``classifier``
= ASPP + 3x3 conv + 1x1 classifier, ``aux_classifier`` = FCN head on layer3), so parameter
counts can be compared with torchvision's published ones: DeepLabV3-ResNet-101 with the aux
head and 21 classes has 60,996,202 parameters, ResNet-50 42,004,074.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pixcontrast.models.heads import build_proj_head, conv_bn_relu, init_weights
from pixcontrast.models.resnet import resnet


class ASPPPooling(nn.Sequential):
    """Image-level pooling branch: global average -> 1x1 conv -> BN -> ReLU -> broadcast."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 (``rates``), image pooling;
    concatenated and projected to ``out_channels``. ``[B, C, h, w] -> [B, out, h, w]``."""

    def __init__(self, in_channels: int, rates: Sequence[int], out_channels: int = 256,
                 dropout: float = 0.5) -> None:
        super().__init__()
        branches = [conv_bn_relu(in_channels, out_channels, 1)]
        branches += [conv_bn_relu(in_channels, out_channels, 3, dilation=r) for r in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    """ASPP -> 3x3 conv -> BN -> ReLU -> 1x1 conv to ``num_classes`` logits."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (12, 24, 36),
                 channels: int = 256) -> None:
        super().__init__(
            ASPP(in_channels, rates, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_classes, 1),
        )


class FCNHead(nn.Sequential):
    """Auxiliary head: 3x3 conv to ``in/4`` -> BN -> ReLU -> dropout 0.1 -> 1x1 conv to logits."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        mid = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(mid, num_classes, 1),
        )


class DeepLabV3(nn.Module):
    """DeepLabV3 with an FCN auxiliary head and a pixel projection head.

    Args:
        backbone: ``"resnet101"``, ``"resnet50"`` or ``"resnet_tiny"`` (see ``resnet.py``).
        num_classes: K.
        proj_dim: embedding dimension D (0 disables the projection head).
        proj_head: ``"convmlp"``, ``"linear"`` or None (no head).
        multi_grid: layer4 multi-grid, e.g. ``(1, 2, 4)``, or None.
        aux_head: build the FCN auxiliary head on layer3 (default True).
        aspp_rates, aspp_channels: ASPP atrous rates (12/24/36 at output stride 8) and width.

    ``forward(images[B, 3, H, W])`` returns a dict of float tensors at ``h = ceil(H/8)``,
    ``w = ceil(W/8)``: ``seg [B, K, h, w]`` logits, ``seg_aux [B, K, h, w]`` (with the aux
    head) and ``embed [B, D, h, w]`` unit-norm per pixel (with the projection head), the
    latter computed from layer4's features.
    """

    output_stride = 8

    def __init__(self, backbone: str, num_classes: int, proj_dim: int = 256,
                 proj_head: str | None = "convmlp", multi_grid: Sequence[int] | None = None,
                 aux_head: bool = True, aspp_rates: Sequence[int] = (12, 24, 36),
                 aspp_channels: int = 256) -> None:
        super().__init__()
        self.backbone = resnet(backbone, multi_grid=multi_grid)
        cin = self.backbone.out_channels
        self.classifier = DeepLabHead(cin, num_classes, aspp_rates, aspp_channels)
        self.aux_classifier = FCNHead(self.backbone.aux_channels, num_classes) if aux_head else None
        init_weights(self.classifier)
        if self.aux_classifier is not None:
            init_weights(self.aux_classifier)
        self.proj_head = build_proj_head(cin, proj_dim, proj_head)
        self.embed_channels = cin

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        c3, c4 = self.backbone(images)
        out = {"seg": self.classifier(c4)}
        if self.aux_classifier is not None:
            out["seg_aux"] = self.aux_classifier(c3)
        if self.proj_head is not None:
            out["embed"] = self.proj_head(c4)
        return out
