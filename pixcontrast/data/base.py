"""Shared machinery of the file-backed segmentation datasets.

A dataset is a list of ``(image_path, label_path)`` pairs, a lookup table from the stored
label values to train ids (``ignore_index`` for void), and a transform. Randomness of the
augmentation comes from ``numpy.random.default_rng([seed, epoch, index])`` (see
``transforms``), so a sample is a pure function of (seed, epoch, index).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["DatasetError", "SegmentationDataset", "make_lut", "require_dir", "read_image",
           "read_label"]


class DatasetError(FileNotFoundError):
    """A dataset folder or file is missing or malformed (the message names the path)."""


def require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise DatasetError(f"{what}: expected a directory at {path}, which does not exist")
    return path


def make_lut(mapping: dict[int, int] | Sequence[int] | None, ignore_index: int,
             size: int = 256) -> np.ndarray:
    """``lut[stored value] = train id``; values not in ``mapping`` → ``ignore_index``.

    ``mapping`` as a sequence: ``mapping[i]`` is the stored value of train id ``i``.
    """
    lut = np.full(size, ignore_index, dtype=np.int64)
    if mapping is None:
        return lut
    items = mapping.items() if isinstance(mapping, dict) else ((v, i) for i, v in enumerate(mapping))
    for stored, train_id in items:
        lut[stored] = train_id
    return lut


def read_image(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None


def read_label(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(f"label {path} must be a single-channel PNG of class ids "
                                   f"(mode L, P or I), got mode {im.mode}")
            return np.asarray(im)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read label {path}: {exc}") from None


class SegmentationDataset(torch.utils.data.Dataset):
    """``(image [3, H, W] float32, label [H, W] int64)`` pairs from image/label files.

    Args:
        items: ``(image_path, label_path)`` pairs.
        lut: int64 lookup table from stored label values to train ids.
        transform: ``(image uint8 [H, W, 3], label [H, W], rng) -> (image, label)`` tensors.
        num_classes, ignore_index, class_names: metadata for the trainer.
        seed: base seed of the per-sample augmentation RNG.
    """

    def __init__(self, items: list[tuple[str, str]], lut: np.ndarray,
                 transform: Callable, num_classes: int, ignore_index: int,
                 class_names: Sequence[str] | None = None, seed: int = 0,
                 name: str = "dataset") -> None:
        self.items, self.lut, self.transform = items, lut, transform
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_names = list(class_names) if class_names is not None else [
            str(i) for i in range(num_classes)]
        self.seed, self.epoch, self.name = seed, 0, name

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw ``(image uint8 [H, W, 3], train-id label int64 [H, W])``."""
        img_path, lbl_path = self.items[index]
        image, raw = read_image(img_path), read_label(lbl_path)
        if raw.shape != image.shape[:2]:
            raise DatasetError(f"label {lbl_path} is {raw.shape[1]}×{raw.shape[0]} but image "
                               f"{img_path} is {image.shape[1]}×{image.shape[0]}")
        if raw.max(initial=0) >= len(self.lut):
            raise DatasetError(f"label {lbl_path} holds value {int(raw.max())}, beyond the "
                               f"{len(self.lut)} ids this dataset maps")
        return image, self.lut[raw]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self.load(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return self.transform(image, label, rng)


def paired_files(image_dir: str, label_dir: str, image_suffix: str, label_suffix: str,
                 what: str, recursive: bool = False) -> list[tuple[str, str]]:
    """Images ``<stem><image_suffix>`` under ``image_dir`` with labels
    ``<stem><label_suffix>`` at the same relative place under ``label_dir``."""
    require_dir(image_dir, f"{what} images")
    require_dir(label_dir, f"{what} labels")
    items = []
    for dirpath, dirnames, filenames in os.walk(image_dir):
        dirnames.sort()
        rel = os.path.relpath(dirpath, image_dir)
        for fn in sorted(filenames):
            if not fn.endswith(image_suffix):
                continue
            stem = fn[: -len(image_suffix)]
            lbl = os.path.normpath(os.path.join(label_dir, rel, stem + label_suffix))
            if not os.path.isfile(lbl):
                raise DatasetError(f"{what}: image {os.path.join(dirpath, fn)} has no label; "
                                   f"expected {lbl}")
            items.append((os.path.join(dirpath, fn), lbl))
        if not recursive:
            break
    if not items:
        raise DatasetError(f"{what}: no '*{image_suffix}' images found under {image_dir}")
    return items
