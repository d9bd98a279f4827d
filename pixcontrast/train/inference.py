"""Inference for evaluation: whole-image, sliding-window, multi-scale + flip.

``predict(model, images, num_classes, ...)`` returns class scores ``[B, K, H, W]`` at the
input resolution (logits for a single pass; summed softmax probabilities when several
scales or flips are combined); ``evaluate_model`` turns a loader into metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixcontrast.train.metrics import ConfusionMatrix

__all__ = ["predict", "slide_logits", "whole_logits", "evaluate_model"]


def _seg(model: nn.Module, images: Tensor) -> Tensor:
    out = model(images)
    return out["seg"] if isinstance(out, dict) else out


def whole_logits(model: nn.Module, images: Tensor) -> Tensor:
    """One forward pass, logits upsampled (bilinear) to the input size: ``[B, K, H, W]``."""
    logits = _seg(model, images)
    return F.interpolate(logits.float(), size=images.shape[-2:], mode="bilinear",
                         align_corners=False)


def slide_logits(model: nn.Module, images: Tensor, num_classes: int,
                 crop: Sequence[int], stride: Sequence[int]) -> Tensor:
    """Sliding-window logits ``[B, K, H, W]``: windows of ``crop`` every ``stride`` pixels
    (the last window flush with the border), overlapping logits averaged. An image smaller
    than the window is padded with zeros (the mean colour after normalisation)."""
    b, _, h, w = images.shape
    ch, cw = crop
    sh, sw = stride
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    if ph or pw:
        images = F.pad(images, (0, pw, 0, ph))
    hh, ww = images.shape[-2:]
    rows = max(math.ceil((hh - ch) / sh), 0) + 1
    cols = max(math.ceil((ww - cw) / sw), 0) + 1
    total = images.new_zeros(b, num_classes, hh, ww, dtype=torch.float32)
    count = images.new_zeros(1, 1, hh, ww, dtype=torch.float32)
    for r in range(rows):
        for c in range(cols):
            y = min(r * sh, hh - ch)
            x = min(c * sw, ww - cw)
            window = images[:, :, y:y + ch, x:x + cw]
            total[:, :, y:y + ch, x:x + cw] += whole_logits(model, window)
            count[:, :, y:y + ch, x:x + cw] += 1
    return (total / count)[:, :, :h, :w]


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, num_classes: int, mode: str = "whole",
            crop: Sequence[int] | None = None, stride: Sequence[int] | None = None,
            scales: Iterable[float] = (1.0,), flip: bool = False) -> Tensor:
    """Class scores ``[B, K, H, W]`` for normalised images ``[B, 3, H, W]``.

    Args:
        mode: ``"whole"`` (one pass per scale) or ``"slide"`` (windows of ``crop`` every
            ``stride``; stride defaults to 2/3 of the window).
        scales: image rescale factors; with more than one scale or ``flip``, the softmax
            probabilities of every pass (resized back to ``H × W``) are summed.
        flip: also run the horizontally flipped image and flip its scores back.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide":
        if crop is None:
            raise ValueError("slide inference needs a crop size")
        crop = (int(crop[0]), int(crop[1]))
        stride = (tuple(int(s) for s in stride) if stride is not None
                  else (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3)))
    scales = list(scales)
    h, w = images.shape[-2:]

    def once(x: Tensor) -> Tensor:
        if mode == "slide":
            return slide_logits(model, x, num_classes, crop, stride)
        return whole_logits(model, x)

    passes = [(s, f) for s in scales for f in ((False, True) if flip else (False,))]
    if len(passes) == 1 and scales[0] == 1.0:
        return once(images)
    out = images.new_zeros(images.shape[0], num_classes, h, w, dtype=torch.float32)
    for s, f in passes:
        x = images
        if s != 1.0:
            x = F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))),
                              mode="bilinear", align_corners=False)
        if f:
            x = x.flip(-1)
        logits = once(x)
        if f:
            logits = logits.flip(-1)
        if logits.shape[-2:] != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        out += logits.softmax(1)
    return out


@torch.no_grad()
def evaluate_model(model: nn.Module, loader: Iterable, num_classes: int, ignore_index: int,
                   device: torch.device, eval_cfg: dict | None = None,
                   crop_size: Sequence[int] | None = None, progress: bool = False) -> dict:
    """Metrics ``{"mIoU", "pixel_acc", "per_class_iou"}`` of ``model`` over ``loader``
    (summed over ``torch.distributed`` ranks when initialised)."""
    eval_cfg = eval_cfg or {}
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index, device)
    mode = eval_cfg.get("mode", "whole")
    crop = eval_cfg.get("crop_size") or crop_size
    if isinstance(crop, int):
        crop = (crop, crop)
    stride = eval_cfg.get("stride")
    if isinstance(stride, int):                # eval.stride: an int means [s, s]
        stride = (stride, stride)
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    for images, labels in it:
        images, labels = images.to(device), labels.to(device)
        scores = predict(model, images, num_classes, mode, crop, stride,
                         eval_cfg.get("scales", (1.0,)), eval_cfg.get("flip", False))
        if scores.shape[-2:] != labels.shape[-2:]:       # image resized by base_size
            scores = F.interpolate(scores, size=labels.shape[-2:], mode="bilinear",
                                   align_corners=False)
        cm.update(scores.argmax(1), labels)
    cm.all_reduce()
    model.train(was_training)
    return cm.compute()
