"""HRNetV2 (Wang et al., TPAMI 2020) backbone and segmentation model.

Module and parameter names follow the official implementation (HRNet-Semantic-Segmentation,
``seg_hrnet.py``): ``conv1, bn1, conv2, bn2, layer1, transition1, stage2, transition2,
stage3, transition3, stage4``; inside a stage ``stage2.0.branches.0.0.conv1.weight`` and
``stage2.0.fuse_layers.1.0.0.0.weight``. An official ImageNet checkpoint
(``hrnetv2_w48_imagenet_pretrained.pth``) therefore loads 1:1 into ``HRNet``; its
classification keys (``incre_modules``, ``downsamp_modules``, ``final_layer``,
``classifier``) are ignored.

Sizes measured here, without our projection head, at 19 classes: HRNetV2-W48 65,859,379
parameters (the published 65.86 M), HRNetV2-W18 9,641,119.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pixcontrast.models.heads import build_proj_head, init_weights
from pixcontrast.models.resnet import BasicBlock, Bottleneck

BLOCKS = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}


def _stage(modules: int, blocks: Sequence[int], channels: Sequence[int]) -> dict:
    return dict(num_modules=modules, num_blocks=tuple(blocks), num_channels=tuple(channels),
                block="BASIC")


def _config(width: int, stem: int = 64, layer1_planes: int = 64, layer1_blocks: int = 4,
            modules: Sequence[int] = (1, 4, 3), blocks: int = 4) -> dict:
    w = [width, 2 * width, 4 * width, 8 * width]
    return dict(
        stem_channels=stem, layer1_planes=layer1_planes, layer1_blocks=layer1_blocks,
        stages=[_stage(modules[0], [blocks] * 2, w[:2]), _stage(modules[1], [blocks] * 3, w[:3]),
                _stage(modules[2], [blocks] * 4, w)],
    )


HRNET_CONFIGS: dict[str, dict] = {
    "hrnet_w48": _config(48),   # branches 48/96/192/384, concat 720
    "hrnet_w18": _config(18),   # branches 18/36/72/144, concat 270
    # tiny: branches 8/16/32/64 (concat 120), two blocks per branch, one module per stage, a
    # 32-channel stem and one bottleneck in layer1: 0.39 M parameters at 19 classes; forward +
    # backward of 8 x 3 x 64 x 64 takes ~0.03 s on 2 cores (one block per branch: 0.024 s).
    "hrnet_tiny": _config(8, stem=32, layer1_planes=16, layer1_blocks=1, modules=(1, 1, 1),
                          blocks=2),
}


class HighResolutionModule(nn.Module):
    """Parallel branches followed by multi-resolution fusion.

    ``forward(list of n tensors [B, c_i, H/2^i, W/2^i]) -> list`` of the same shapes. Fusion
    into branch i: higher-resolution inputs go through strided 3x3 convs, lower-resolution
    ones through a 1x1 conv and bilinear upsampling; summed, then ReLU.
    """

    def __init__(self, block, num_blocks: Sequence[int], num_inchannels: Sequence[int],
                 num_channels: Sequence[int], multi_scale_output: bool = True,
                 align_corners: bool = True) -> None:
        super().__init__()
        self.num_branches = len(num_channels)
        self.align_corners = align_corners
        self.num_inchannels = list(num_inchannels)
        self.multi_scale_output = multi_scale_output
        self.branches = nn.ModuleList(
            self._make_branch(i, block, num_blocks[i], num_channels[i])
            for i in range(self.num_branches))
        self.fuse_layers = self._make_fuse_layers()
        self.relu = nn.ReLU(inplace=False)

    def _make_branch(self, i: int, block, blocks: int, channels: int) -> nn.Sequential:
        cin, cout = self.num_inchannels[i], channels * block.expansion
        downsample = None
        if cin != cout:
            downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        layers = [block(cin, channels, 1, downsample)]
        layers += [block(cout, channels) for _ in range(1, blocks)]
        self.num_inchannels[i] = cout
        return nn.Sequential(*layers)

    def _make_fuse_layers(self) -> nn.ModuleList | None:
        n = self.num_branches
        if n == 1:
            return None
        c = self.num_inchannels
        fuse = nn.ModuleList()
        for i in range(n if self.multi_scale_output else 1):
            row = nn.ModuleList()
            for j in range(n):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(c[j], c[i], 1, bias=False),
                                             nn.BatchNorm2d(c[i])))
                elif j == i:
                    row.append(None)
                else:
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        cout = c[i] if last else c[j]
                        step = [nn.Conv2d(c[j], cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout)]
                        if not last:
                            step.append(nn.ReLU(inplace=False))
                        steps.append(nn.Sequential(*step))
                    row.append(nn.Sequential(*steps))
            fuse.append(row)
        return fuse

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        x = [branch(xi) for branch, xi in zip(self.branches, x)]
        if self.fuse_layers is None:
            return x
        out = []
        for i, row in enumerate(self.fuse_layers):
            size = x[i].shape[-2:]
            y = None
            for j, layer in enumerate(row):
                if j == i:
                    t = x[j]
                elif j > i:
                    t = F.interpolate(layer(x[j]), size=size, mode="bilinear",
                                      align_corners=self.align_corners)
                else:
                    t = layer(x[j])
                y = t if y is None else y + t
            out.append(self.relu(y))
        return out


class HRNet(nn.Module):
    """HRNetV2 backbone.

    ``forward(images[B, 3, H, W])`` returns the four branch outputs
    ``[B, c_i, ceil(H/2^(i+2)), ...]`` (i = 0..3; c = 48/96/192/384 for W48).
    ``concat(feats)`` upsamples them to the first branch and concatenates:
    ``[B, sum(c), H/4, W/4]`` (720 channels for W48); ``out_channels`` is that sum.
    """

    def __init__(self, stem_channels: int, layer1_planes: int, layer1_blocks: int,
                 stages: Sequence[dict], align_corners: bool = True) -> None:
        super().__init__()
        self.align_corners = align_corners
        s = stem_channels
        self.conv1 = nn.Conv2d(3, s, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(s)
        self.conv2 = nn.Conv2d(s, s, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(s)
        self.relu = nn.ReLU(inplace=True)
        cout = layer1_planes * Bottleneck.expansion
        downsample = None
        if s != cout:
            downsample = nn.Sequential(nn.Conv2d(s, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.layer1 = nn.Sequential(Bottleneck(s, layer1_planes, 1, downsample),
                                    *[Bottleneck(cout, layer1_planes)
                                      for _ in range(1, layer1_blocks)])
        pre = [cout]
        for idx, cfg in enumerate(stages, start=1):
            block = BLOCKS[cfg["block"]]
            channels = [c * block.expansion for c in cfg["num_channels"]]
            setattr(self, f"transition{idx}", self._make_transition(pre, channels))
            modules = [HighResolutionModule(block, cfg["num_blocks"], channels,
                                            cfg["num_channels"], True, align_corners)
                       for _ in range(cfg["num_modules"])]
            setattr(self, f"stage{idx + 1}", nn.Sequential(*modules))
            pre = modules[-1].num_inchannels
        self.num_stages = len(stages)
        self.branch_channels = tuple(pre)
        self.out_channels = sum(pre)
        init_weights(self)

    @staticmethod
    def _make_transition(pre: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
        layers = nn.ModuleList()
        for i, c in enumerate(cur):
            if i < len(pre):
                if c != pre[i]:
                    layers.append(nn.Sequential(nn.Conv2d(pre[i], c, 3, 1, 1, bias=False),
                                                nn.BatchNorm2d(c), nn.ReLU(inplace=True)))
                else:
                    layers.append(None)
            else:
                steps = []
                for j in range(i + 1 - len(pre)):
                    cin = pre[-1]
                    cout = c if j == i - len(pre) else cin
                    steps.append(nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False),
                                               nn.BatchNorm2d(cout), nn.ReLU(inplace=True)))
                layers.append(nn.Sequential(*steps))
        return layers

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(images)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for idx in range(1, self.num_stages + 1):
            transition = getattr(self, f"transition{idx}")
            xs = [xs[i] if t is None else t(xs[min(i, len(xs) - 1)])
                  for i, t in enumerate(transition)]
            xs = getattr(self, f"stage{idx + 1}")(xs)
        return xs

    def concat(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        ups = [feats[0]] + [F.interpolate(f, size=size, mode="bilinear",
                                          align_corners=self.align_corners) for f in feats[1:]]
        return torch.cat(ups, dim=1)


def hrnet(name: str, align_corners: bool = True) -> HRNet:
    """An HRNetV2 backbone by name: one of ``HRNET_CONFIGS``."""
    return HRNet(**HRNET_CONFIGS[name], align_corners=align_corners)


class HRNetV2Seg(nn.Module):
    """HRNetV2 segmentation model with a pixel projection head.

    Args:
        backbone: ``"hrnet_w48"``, ``"hrnet_w18"`` or ``"hrnet_tiny"``.
        num_classes: K.
        proj_dim: embedding dimension D (0 disables the projection head).
        proj_head: ``"convmlp"``, ``"linear"`` or None.
        align_corners: bilinear upsampling mode of the fusion and concatenation (official: True).

    ``forward(images[B, 3, H, W])`` returns ``seg [B, K, h, w]`` logits and
    ``embed [B, D, h, w]`` (unit-norm per pixel), both at ``h = ceil(H/4)``, ``w = ceil(W/4)``,
    computed from the concatenated branches (``last_layer``: 1x1 conv C->C, BN, ReLU,
    1x1 conv C->K, as the official model).
    """

    output_stride = 4

    def __init__(self, backbone: str, num_classes: int, proj_dim: int = 256,
                 proj_head: str | None = "convmlp", align_corners: bool = True) -> None:
        super().__init__()
        self.backbone = hrnet(backbone, align_corners)
        c = self.backbone.out_channels
        self.last_layer = nn.Sequential(
            nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, num_classes, 1))
        init_weights(self.last_layer)
        self.proj_head = build_proj_head(c, proj_dim, proj_head)
        self.embed_channels = c

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone.concat(self.backbone(images))
        out = {"seg": self.last_layer(feats)}
        if self.proj_head is not None:
            out["embed"] = self.proj_head(feats)
        return out
