"""Object-contextual representations (OCR, Yuan et al., ECCV 2020) on HRNetV2.

Names follow the official ``seg_hrnet_ocr.py`` (``conv3x3_ocr``, ``ocr_gather_head``,
``ocr_distri_head.object_context_block.f_pixel`` ..., ``cls_head``, ``aux_head``).
HRNet-W48-OCR with 19 classes has 70,372,678 parameters (the published 70.37 M) without our
projection head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pixcontrast.models.heads import build_proj_head, init_weights
from pixcontrast.models.hrnet import hrnet


class SpatialGather(nn.Module):
    """Soft object regions: class-probability-weighted averages of pixel features.

    ``forward(feats[B, C, h, w], probs[B, K, h, w] logits) -> [B, C, K, 1]``, where the
    logits are softmaxed over the pixels of each class map.
    """

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, feats: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        b, k = logits.shape[:2]
        c = feats.shape[1]
        probs = F.softmax(self.scale * logits.reshape(b, k, -1), dim=2)       # [B, K, hw]
        region = torch.bmm(probs, feats.reshape(b, c, -1).transpose(1, 2))    # [B, K, C]
        return region.transpose(1, 2).unsqueeze(3)                            # [B, C, K, 1]


class ObjectAttentionBlock(nn.Module):
    """Pixel-region relation: each pixel attends over the K object-region representations.

    ``forward(x[B, C, h, w], proxy[B, C, K, 1]) -> [B, C, h, w]``. Queries, keys and values
    have ``key_channels``; the result is projected back to C.
    """

    def __init__(self, in_channels: int, key_channels: int) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.f_pixel = nn.Sequential(nn.Conv2d(in_channels, key_channels, 1, bias=False),
                                     _bn_relu(key_channels),
                                     nn.Conv2d(key_channels, key_channels, 1, bias=False),
                                     _bn_relu(key_channels))
        self.f_object = nn.Sequential(nn.Conv2d(in_channels, key_channels, 1, bias=False),
                                      _bn_relu(key_channels),
                                      nn.Conv2d(key_channels, key_channels, 1, bias=False),
                                      _bn_relu(key_channels))
        self.f_down = nn.Sequential(nn.Conv2d(in_channels, key_channels, 1, bias=False),
                                    _bn_relu(key_channels))
        self.f_up = nn.Sequential(nn.Conv2d(key_channels, in_channels, 1, bias=False),
                                  _bn_relu(in_channels))

    def forward(self, x: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        query = self.f_pixel(x).reshape(b, self.key_channels, -1).transpose(1, 2)   # [B, hw, k]
        key = self.f_object(proxy).reshape(b, self.key_channels, -1)              # [B, k, K]
        value = self.f_down(proxy).reshape(b, self.key_channels, -1).transpose(1, 2)  # [B, K, k]
        sim = F.softmax(torch.bmm(query, key) * self.key_channels ** -0.5, dim=-1)   # [B, hw, K]
        context = torch.bmm(sim, value).transpose(1, 2).reshape(b, self.key_channels, h, w)
        return self.f_up(context)


def _bn_relu(c: int) -> nn.Sequential:
    # One module, like the official ModuleHelper.BNReLU, so parameter names match
    # (``f_pixel.1.0.weight``).
    return nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))


class SpatialOCR(nn.Module):
    """Object-contextual representation: ``[x, context(x)]`` -> 1x1 conv -> BN -> ReLU -> dropout.

    ``forward(x[B, C, h, w], proxy[B, C, K, 1]) -> [B, out_channels, h, w]``.
    """

    def __init__(self, in_channels: int, key_channels: int, out_channels: int,
                 dropout: float = 0.05) -> None:
        super().__init__()
        self.object_context_block = ObjectAttentionBlock(in_channels, key_channels)
        self.conv_bn_dropout = nn.Sequential(
            nn.Conv2d(2 * in_channels, out_channels, 1, bias=False),
            _bn_relu(out_channels), nn.Dropout2d(dropout))

    def forward(self, x: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        context = self.object_context_block(x, proxy)
        return self.conv_bn_dropout(torch.cat([context, x], dim=1))


class HRNetOCR(nn.Module):
    """HRNetV2 + OCR head with a pixel projection head.

    Args:
        backbone: ``"hrnet_w48"``, ``"hrnet_w18"`` or ``"hrnet_tiny"``.
        num_classes: K.
        proj_dim: embedding dimension D (0 disables the projection head).
        proj_head: ``"convmlp"``, ``"linear"`` or None.
        ocr_mid_channels, ocr_key_channels: 512 and 256 in the paper.
        align_corners: bilinear mode of HRNet's fusion (official: True).

    ``forward(images[B, 3, H, W])`` returns, at ``h = ceil(H/4)``, ``w = ceil(W/4)``:
    ``seg [B, K, h, w]`` (OCR logits), ``seg_aux [B, K, h, w]`` (the auxiliary soft-region
    logits) and ``embed [B, D, h, w]`` (unit-norm per pixel, from the concatenated branches).
    """

    output_stride = 4

    def __init__(self, backbone: str, num_classes: int, proj_dim: int = 256,
                 proj_head: str | None = "convmlp", ocr_mid_channels: int = 512,
                 ocr_key_channels: int = 256, align_corners: bool = True) -> None:
        super().__init__()
        self.backbone = hrnet(backbone, align_corners)
        c = self.backbone.out_channels
        mid = ocr_mid_channels
        self.conv3x3_ocr = nn.Sequential(nn.Conv2d(c, mid, 3, padding=1), nn.BatchNorm2d(mid),
                                         nn.ReLU(inplace=True))
        self.ocr_gather_head = SpatialGather()
        self.ocr_distri_head = SpatialOCR(mid, ocr_key_channels, mid)
        self.cls_head = nn.Conv2d(mid, num_classes, 1)
        self.aux_head = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                      nn.Conv2d(c, num_classes, 1))
        for m in (self.conv3x3_ocr, self.ocr_distri_head, self.cls_head, self.aux_head):
            init_weights(m)
        self.proj_head = build_proj_head(c, proj_dim, proj_head)
        self.embed_channels = c

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone.concat(self.backbone(images))
        aux = self.aux_head(feats)
        x = self.conv3x3_ocr(feats)
        x = self.ocr_distri_head(x, self.ocr_gather_head(x, aux))
        out = {"seg": self.cls_head(x), "seg_aux": aux}
        if self.proj_head is not None:
            out["embed"] = self.proj_head(feats)
        return out
