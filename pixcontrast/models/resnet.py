"""Dilated ResNet backbones with torchvision-compatible parameter names.

The module tree and parameter names match ``torchvision.models.resnet`` (``conv1``, ``bn1``,
``layer1.0.conv1``, ..., ``layer1.0.downsample.0`` / ``.1``), so a torchvision ImageNet
checkpoint loads 1:1 (its ``fc.*`` keys are ignored: there is no classifier here).

For segmentation the last two stages are dilated instead of strided (output stride 8):
every block of ``layer3`` has dilation 2 and every block of ``layer4`` dilation 4, times an
optional multi-grid ``(1, 2, 4)`` in ``layer4`` (DeepLabV3, Chen et al. 2017). Unlike
torchvision, which keeps the first block of a dilated layer at the previous dilation, all
blocks of a layer share its rate, as in the DeepLab papers; the parameters are identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pixcontrast.models.heads import init_weights


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; ``[B, cin, H, W] -> [B, planes, H/stride, W/stride]``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 bottleneck (ResNet v1.5: stride on the 3x3).

    ``[B, cin, H, W] -> [B, 4*planes, H/stride, W/stride]``.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet feature extractor at output stride 8.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, e.g. ``(3, 4, 23, 3)`` for ResNet-101.
        width: channels of the stem and of ``layer1``'s planes (64 in torchvision).
        multi_grid: per-block multipliers of layer4's dilation (cycled), or None.

    ``forward(x[B, 3, H, W])`` returns ``(c3, c4)``: ``layer3`` and ``layer4`` outputs, both at
    ``ceil(H/8) x ceil(W/8)``, with ``4*width*expansion`` and ``8*width*expansion`` channels.
    ``out_channels`` / ``aux_channels`` give those numbers (2048 / 1024 for ResNet-50/101).
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
                 width: int = 64, multi_grid: Sequence[int] | None = None) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], dilations=[2] * layers[2])
        grid = tuple(multi_grid) if multi_grid else (1,)
        layer4_rates = [4 * grid[i % len(grid)] for i in range(layers[3])]
        self.layer4 = self._make_layer(block, 8 * width, layers[3], dilations=layer4_rates)
        self.aux_channels = 4 * width * block.expansion
        self.out_channels = 8 * width * block.expansion
        init_weights(self)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1,
                    dilations: Sequence[int] | None = None) -> nn.Sequential:
        dilations = list(dilations) if dilations is not None else [1] * blocks
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        mods = [block(self.inplanes, planes, stride, downsample, dilations[0])]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes, dilation=d) for d in dilations[1:]]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        c3 = self.layer3(x)
        c4 = self.layer4(c3)
        return c3, c4


RESNET_CONFIGS: dict[str, dict] = {
    "resnet50": dict(block=Bottleneck, layers=(3, 4, 6, 3), width=64),
    "resnet101": dict(block=Bottleneck, layers=(3, 4, 23, 3), width=64),
    # tiny: BasicBlock ResNet-10 at a quarter of ResNet-18's width, for fast tests and CPU training
    "resnet_tiny": dict(block=BasicBlock, layers=(1, 1, 1, 1), width=16),
}


def resnet(name: str, multi_grid: Sequence[int] | None = None) -> ResNet:
    """A dilated (output stride 8) ResNet by name: one of ``RESNET_CONFIGS``."""
    return ResNet(**RESNET_CONFIGS[name], multi_grid=multi_grid)
