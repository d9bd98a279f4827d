"""Confusion-matrix metrics and the inference modes (whole, slide, multi-scale + flip)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixcontrast.train.inference import predict, slide_logits, whole_logits
from pixcontrast.train.metrics import ConfusionMatrix, confusion_matrix, metrics_from_confusion


def _iou_loop(pred, label, k, ignore):
    ious = []
    for c in range(k):
        valid = label != ignore
        tp = ((pred == c) & (label == c) & valid).sum().item()
        union = (((pred == c) | (label == c)) & valid).sum().item()
        ious.append(tp / union if union else None)
    return ious


def test_confusion_matrix_against_a_loop():
    k, ignore = 6, 255
    label = torch.randint(0, k, (3, 17, 23))
    label[torch.rand(label.shape) < 0.2] = ignore
    label[label == 4] = 3                    # class 4 absent from ground truth
    pred = torch.randint(0, k, label.shape)
    pred[pred == 5] = 0                      # class 5 never predicted
    label[label == 5] = 0                    # ... nor labelled: no IoU at all
    cm = confusion_matrix(pred, label, k, ignore)
    valid = label != ignore
    assert cm.sum() == valid.sum()
    assert cm[2, 1] == ((label == 2) & (pred == 1)).sum()
    m = metrics_from_confusion(cm)
    ref = _iou_loop(pred, label, k, ignore)
    assert m["per_class_iou"][5] is None and ref[5] is None
    for a, b in zip(m["per_class_iou"], ref):
        assert (a is None and b is None) or abs(a - b) < 1e-12
    assert m["per_class_iou"][4] == 0.0      # predicted but never labelled: IoU 0, counts
    assert math.isclose(m["mIoU"], sum(v for v in ref if v is not None) / 5)
    assert math.isclose(m["pixel_acc"], ((pred == label) & valid).sum().item() / valid.sum().item())


def test_accumulation_and_perfect_prediction():
    cm = ConfusionMatrix(3, ignore_index=-1)
    label = torch.randint(0, 3, (2, 8, 8))
    for _ in range(3):
        cm.update(label, label)
    m = cm.compute()
    assert m["mIoU"] == 1.0 and m["pixel_acc"] == 1.0 and cm.matrix.sum() == 3 * 128
    with pytest.raises(ValueError, match="differ"):
        cm.update(label[:, :4], label)


class _Conv(nn.Module):
    """Stride-4 logits, like the models' embedding grid."""

    def __init__(self, k=4):
        super().__init__()
        self.conv = nn.Conv2d(3, k, 5, stride=4, padding=2)

    def forward(self, x):
        return {"seg": self.conv(x)}


def test_inference_modes():
    torch.manual_seed(0)
    model = _Conv().eval()
    x = torch.randn(2, 3, 40, 56)
    whole = predict(model, x, 4)
    torch.testing.assert_close(whole, whole_logits(model, x))
    assert whole.shape == (2, 4, 40, 56)
    # one window covering the image = whole-image inference
    torch.testing.assert_close(predict(model, x, 4, "slide", crop=(40, 56)), whole)
    # overlapping windows: every pixel covered, average of the windows' logits
    slide = slide_logits(model, x, 4, (24, 32), (16, 20))
    assert slide.shape == whole.shape and torch.isfinite(slide).all()
    manual = torch.zeros_like(whole)
    count = torch.zeros(1, 1, 40, 56)
    for y in (0, 16):
        for xx in (0, 20, 24):
            manual[:, :, y:y + 24, xx:xx + 32] += whole_logits(model, x[:, :, y:y + 24, xx:xx + 32])
            count[:, :, y:y + 24, xx:xx + 32] += 1
    torch.testing.assert_close(slide, manual / count)
    # an image smaller than the window is padded, the output cropped back
    assert slide_logits(model, x[:, :, :10, :12], 4, (24, 32), (16, 20)).shape == (2, 4, 10, 12)
    # flip: summed softmax of the image and its mirror
    flip = predict(model, x, 4, flip=True)
    ref = whole.softmax(1) + whole_logits(model, x.flip(-1)).flip(-1).softmax(1)
    torch.testing.assert_close(flip, ref)
    # multi-scale: each scale resized back to the input size
    ms = predict(model, x, 4, scales=(0.5, 1.0))
    half = whole_logits(model, F.interpolate(x, size=(20, 28), mode="bilinear",
                                             align_corners=False))
    ref = F.interpolate(half, size=(40, 56), mode="bilinear", align_corners=False).softmax(1)
    torch.testing.assert_close(ms, ref + whole.softmax(1))
    with pytest.raises(ValueError, match="mode"):
        predict(model, x, 4, "tiles")
