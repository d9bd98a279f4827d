"""Segmentation models with a pixel projection head, built by name.

    from pixcontrast.models import build_model
    model = build_model("hrnet_w48", num_classes=19, proj_dim=256)
    out = model(images)          # images [B, 3, H, W] float
    out["seg"]      # [B, K, h, w] logits at the embedding grid
    out["seg_aux"]  # [B, K, h', w'] auxiliary logits (DeepLabV3 and OCR models only)
    out["embed"]    # [B, proj_dim, h, w] unit L2 norm per pixel (absent without a head)

The embedding grid is 1/8 of the input for DeepLabV3 (``h = ceil(H/8)``) and 1/4 for
HRNet and OCR (``h = ceil(H/4)``); ``model.output_stride`` says which. The projection head
is ``model.proj_head`` (None when ``proj_dim=0`` or ``proj_head=None``); its input is
layer4 for DeepLabV3 and the concatenated HRNet branches for HRNet and OCR.
"""

from __future__ import annotations

import inspect
import os

from torch import nn

from pixcontrast.models._pretrained import (CheckpointError, load_into, read_state_dict,
                                            state_dict_mismatch)
from pixcontrast.models.deeplabv3 import DeepLabV3
from pixcontrast.models.heads import PROJ_HEADS, ProjectionHead, count_parameters
from pixcontrast.models.hrnet import HRNet, HRNetV2Seg
from pixcontrast.models.ocr import HRNetOCR
from pixcontrast.models.resnet import ResNet

# Keys of the ImageNet classifiers that a segmentation backbone does not have.
_RESNET_CLS_KEYS = ("fc.",)
_HRNET_CLS_KEYS = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")

# name -> (model class, fixed constructor arguments, checkpoint keys to ignore)
_REGISTRY: dict[str, tuple[type[nn.Module], dict, tuple[str, ...]]] = {
    "deeplabv3_r101": (DeepLabV3, dict(backbone="resnet101"), _RESNET_CLS_KEYS),
    "deeplabv3_r50": (DeepLabV3, dict(backbone="resnet50"), _RESNET_CLS_KEYS),
    "deeplabv3_tiny": (DeepLabV3, dict(backbone="resnet_tiny", aspp_rates=(2, 4, 6),
                                       aspp_channels=64), _RESNET_CLS_KEYS),
    "hrnet_w48": (HRNetV2Seg, dict(backbone="hrnet_w48"), _HRNET_CLS_KEYS),
    "hrnet_w18": (HRNetV2Seg, dict(backbone="hrnet_w18"), _HRNET_CLS_KEYS),
    "hrnet_tiny": (HRNetV2Seg, dict(backbone="hrnet_tiny"), _HRNET_CLS_KEYS),
    "hrnet_w48_ocr": (HRNetOCR, dict(backbone="hrnet_w48"), _HRNET_CLS_KEYS),
    "hrnet_w18_ocr": (HRNetOCR, dict(backbone="hrnet_w18"), _HRNET_CLS_KEYS),
    "hrnet_ocr_tiny": (HRNetOCR, dict(backbone="hrnet_tiny", ocr_mid_channels=64,
                                      ocr_key_channels=32), _HRNET_CLS_KEYS),
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def model_options(name: str) -> tuple[str, ...]:
    """The keyword options ``build_model`` accepts for ``name`` (besides the fixed ones)."""
    cls, fixed, _ = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    fixed_names = {"self", "num_classes", "proj_dim", *fixed}
    return tuple(p for p in params if p not in fixed_names)


def _lookup(name: str):
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}") from None


def build_model(name: str, num_classes: int, proj_dim: int = 256,
                pretrained: str | os.PathLike | None = None, **options) -> nn.Module:
    """Build a segmentation model by name.

    Args:
        name: one of ``MODEL_NAMES``: ``deeplabv3_r101``, ``deeplabv3_r50``, ``hrnet_w48``,
            ``hrnet_w18``, ``hrnet_w48_ocr``, ``hrnet_w18_ocr`` and the small
            ``deeplabv3_tiny``, ``hrnet_tiny``, ``hrnet_ocr_tiny`` (< 1 M parameters).
        num_classes: K, the number of segmentation classes.
        proj_dim: embedding dimension D of the projection head; 0 builds no head (and
            ``forward`` returns no ``"embed"``).
        pretrained: path of a local ImageNet backbone checkpoint: torchvision ResNet names for
            DeepLabV3, official HRNet names (``hrnetv2_w48_imagenet_pretrained.pth``) for
            HRNet/OCR. Classification keys are ignored; any other mismatch raises
            ``CheckpointError`` (a ValueError) listing the keys. Nothing is downloaded.
        **options: ``proj_head="convmlp" | "linear" | None`` (all models);
            ``multi_grid=(1, 2, 4) | None``, ``aux_head``, ``aspp_rates``, ``aspp_channels``
            (DeepLabV3); ``align_corners`` (HRNet, OCR); ``ocr_mid_channels``,
            ``ocr_key_channels`` (OCR). ``model_options(name)`` lists them.

    Returns:
        an ``nn.Module`` whose ``forward(images[B, 3, H, W])`` returns a dict with ``seg``,
        ``embed`` (when it has a projection head) and ``seg_aux`` (DeepLabV3, OCR).
    """
    cls, fixed, ignore = _lookup(name)
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"build_model({name!r}) got unknown option(s) {', '.join(unknown)}; "
                        f"valid options: {', '.join(valid)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(proj_dim, bool) or not isinstance(proj_dim, int) or proj_dim < 0:
        raise ValueError(f"proj_dim must be a non-negative int (0: no projection head), "
                         f"got {proj_dim!r}")
    kind = options.get("proj_head", "convmlp")
    if kind is not None and kind not in PROJ_HEADS:
        raise ValueError(f"unknown proj_head {kind!r}; valid: {', '.join(PROJ_HEADS)} or None")
    model = cls(**fixed, num_classes=num_classes, proj_dim=proj_dim, **options)
    if pretrained is not None:
        load_into(model.backbone, pretrained, ignore_prefixes=ignore,
                  what=f"{name} backbone")
    return model


def convert_sync_batchnorm(model: nn.Module, process_group=None) -> nn.Module:
    """Replace every BatchNorm with SyncBatchNorm (for DDP); returns the converted model.

    Thin wrapper over ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: running statistics
    and affine parameters are carried over.
    """
    return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)


__all__ = ["build_model", "MODEL_NAMES", "model_options", "convert_sync_batchnorm",
           "CheckpointError", "ProjectionHead", "count_parameters", "read_state_dict",
           "state_dict_mismatch",
           "DeepLabV3", "HRNetV2Seg", "HRNetOCR", "HRNet", "ResNet"]
