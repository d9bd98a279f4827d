"""Confusion-matrix segmentation metrics: mIoU, per-class IoU, pixel accuracy.

    cm = ConfusionMatrix(num_classes, ignore_index=255)
    cm.update(pred [B, H, W], label [B, H, W])       # any integer dtype, same shape
    cm.all_reduce()                                  # sum over torch.distributed ranks
    cm.compute() -> {"mIoU", "pixel_acc", "per_class_iou"}

IoU_c = TP_c / (TP_c + FP_c + FN_c). A class absent from both ground truth and prediction
has no IoU (``None`` in ``per_class_iou``) and is left out of the mean, the usual
convention (mmseg's ``nanmean``). Pixel accuracy = Σ TP / labelled pixels.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["ConfusionMatrix", "confusion_matrix", "metrics_from_confusion"]


def confusion_matrix(pred: Tensor, label: Tensor, num_classes: int, ignore_index: int = 255
                     ) -> Tensor:
    """``[K, K]`` int64, rows = ground truth, columns = prediction; ignored pixels and
    labels outside ``[0, K)`` do not count. Predictions must lie in ``[0, K)``."""
    if pred.shape != label.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and label {tuple(label.shape)} differ")
    label = label.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = (label != ignore_index) & (label >= 0) & (label < num_classes)
    idx = label[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes,
                                                                         num_classes)


def metrics_from_confusion(cm: Tensor) -> dict:
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = tp / union                                     # nan where union == 0
    valid = union > 0
    miou = float(iou[valid].mean()) if bool(valid.any()) else float("nan")
    total = float(cm.sum())
    return {"mIoU": miou,
            "pixel_acc": float(tp.sum()) / total if total > 0 else float("nan"),
            "per_class_iou": [None if math.isnan(v) else float(v) for v in iou.tolist()]}


class ConfusionMatrix:
    """Accumulates a ``[K, K]`` int64 confusion matrix over batches (and ranks)."""

    def __init__(self, num_classes: int, ignore_index: int = 255,
                 device: torch.device | str = "cpu") -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)

    def update(self, pred: Tensor, label: Tensor) -> None:
        self.matrix += confusion_matrix(pred.to(self.matrix.device),
                                        label.to(self.matrix.device),
                                        self.num_classes, self.ignore_index)

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.matrix)

    def compute(self) -> dict:
        return metrics_from_confusion(self.matrix)
