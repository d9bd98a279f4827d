"""Segmentation augmentation: random scale, crop with ignore padding, flip, photometric
jitter, ImageNet normalisation.

Every random draw comes from the ``numpy.random.Generator`` passed in, which the datasets
derive from ``(seed, epoch, index)``: a sample's augmentation does not depend on worker
count, process state or what came before, so a resumed run sees exactly the same batches.

Inputs are an image ``uint8 [H, W, 3]`` (numpy) and a label map ``int [H, W]`` (numpy,
already in train ids with ``ignore_index`` for void); outputs are tensors
``image float32 [3, h, w]`` (normalised) and ``label int64 [h, w]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TrainTransform", "EvalTransform", "normalize",
           "to_tensors"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[Tensor, Tensor]:
    """``uint8 [H, W, 3]`` → float ``[3, H, W]`` in [0, 1]; label → int64 ``[H, W]``."""
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    return img, torch.from_numpy(np.ascontiguousarray(label)).long()


def normalize(image: Tensor) -> Tensor:
    """ImageNet mean/std normalisation of a ``[3, H, W]`` (or ``[B, 3, H, W]``) image in [0, 1]."""
    mean = image.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = image.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return (image - mean) / std


def _resize(image: Tensor, label: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    if tuple(image.shape[-2:]) == size:
        return image, label
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                          antialias=size[0] < image.shape[-2])[0].clamp_(0, 1)
    label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image, label


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def _photometric(image: Tensor, rng: np.random.Generator, strength: float = 1.0) -> Tensor:
    """Brightness, contrast, saturation (±25 %) and a small hue rotation, in random order."""
    ops = rng.permutation(4)
    for op in ops:
        if rng.random() < 0.5:
            continue
        if op == 0:                                     # brightness
            image = image * (1 + strength * rng.uniform(-0.25, 0.25))
        elif op == 1:                                   # contrast
            mean = image.mean()
            image = (image - mean) * (1 + strength * rng.uniform(-0.25, 0.25)) + mean
        elif op == 2:                                   # saturation
            grey = (image * image.new_tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0)
            image = (image - grey) * (1 + strength * rng.uniform(-0.25, 0.25)) + grey
        else:                                           # hue: rotate about the grey axis
            theta = strength * rng.uniform(-0.05, 0.05) * 2 * np.pi
            c, s = np.cos(theta), np.sin(theta)
            k = 1 / np.sqrt(3)
            # Rodrigues rotation about (1, 1, 1)/√3
            rot = (c * np.eye(3) + s * np.array([[0, -k, k], [k, 0, -k], [-k, k, 0]])
                   + (1 - c) * np.full((3, 3), k * k))
            image = torch.einsum("ij,jhw->ihw", image.new_tensor(rot), image)
        image = image.clamp(0, 1)
    return image


class TrainTransform:
    """Random scale → crop (ignore padding) → flip → photometric jitter → normalise.

    Args:
        crop_size: ``[H, W]`` (or int) of the output.
        scale_range: ``(min, max)`` of the random rescale factor (uniform).
        base_size: resize so the long side is ``base_size`` before the random scale (None:
            the image's own size).
        flip: random horizontal flip with probability 0.5.
        photometric: random brightness/contrast/saturation/hue jitter.
        ignore_index: label of padded pixels.
    """

    def __init__(self, crop_size: int | Sequence[int], scale_range: Sequence[float] = (0.5, 2.0),
                 base_size: int | None = None, flip: bool = True, photometric: bool = True,
                 ignore_index: int = 255) -> None:
        self.crop_size = _pair(crop_size)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.base_size, self.flip, self.photometric = base_size, flip, photometric
        self.ignore_index = ignore_index

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
                 ) -> tuple[Tensor, Tensor]:
        img, lbl = to_tensors(image, label)
        h, w = img.shape[-2:]
        base = 1.0 if self.base_size is None else self.base_size / max(h, w)
        s = base * rng.uniform(*self.scale_range)
        img, lbl = _resize(img, lbl, (max(1, round(h * s)), max(1, round(w * s))))
        img, lbl = self._crop(img, lbl, rng)
        if self.flip and rng.random() < 0.5:
            img, lbl = img.flip(-1), lbl.flip(-1)
        if self.photometric:
            img = _photometric(img, rng)
        return normalize(img).contiguous(), lbl.contiguous()

    def _crop(self, img: Tensor, lbl: Tensor, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        ch, cw = self.crop_size
        h, w = img.shape[-2:]
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        if ph or pw:
            # pad the image with the mean colour (0 after normalisation), the label with ignore
            mean = img.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
            img = F.pad(img - mean, (0, pw, 0, ph)) + mean
            lbl = F.pad(lbl, (0, pw, 0, ph), value=self.ignore_index)
            h, w = img.shape[-2:]
        y = int(rng.integers(0, h - ch + 1))
        x = int(rng.integers(0, w - cw + 1))
        return img[:, y:y + ch, x:x + cw], lbl[y:y + ch, x:x + cw]


class EvalTransform:
    """Normalisation only (the full image is evaluated); optional resize of the long side."""

    def __init__(self, base_size: int | None = None) -> None:
        self.base_size = base_size

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
                 ) -> tuple[Tensor, Tensor]:
        img, lbl = to_tensors(image, label)
        if self.base_size is not None:
            h, w = img.shape[-2:]
            s = self.base_size / max(h, w)
            img, _ = _resize(img, lbl, (round(h * s), round(w * s)))   # labels stay full size
        return normalize(img).contiguous(), lbl.contiguous()
