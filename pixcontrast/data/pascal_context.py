"""PASCAL-Context (59 classes), prepared PNG masks in the usual layout::

    root/JPEGImages/<id>.jpg
    root/SegmentationClassContext/<id>.png     # 0 = background, 1..59 = classes
    root/ImageSets/SegmentationContext/<split>.txt

Background (0) is ignored, classes 1..59 become train ids 0..58 (the 59-class protocol)."""

from __future__ import annotations

import os

from pixcontrast.data.base import (DatasetError, SegmentationDataset, make_lut, require_dir)

__all__ = ["PASCAL_CONTEXT_CLASSES", "pascal_context"]

PASCAL_CONTEXT_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck",
    "tvmonitor", "wall", "water", "window", "wood")


def pascal_context(root: str, split: str, transform, ignore_index: int = 255, seed: int = 0
                   ) -> SegmentationDataset:
    require_dir(root, "PASCAL-Context root (with JPEGImages/, SegmentationClassContext/, "
                      "ImageSets/SegmentationContext/)")
    list_file = os.path.join(root, "ImageSets", "SegmentationContext", f"{split}.txt")
    if not os.path.isfile(list_file):
        raise DatasetError(f"PASCAL-Context {split}: expected the image list {list_file} "
                           "(one image id per line)")
    img_dir = require_dir(os.path.join(root, "JPEGImages"), "PASCAL-Context images")
    lbl_dir = require_dir(os.path.join(root, "SegmentationClassContext"),
                          "PASCAL-Context masks")
    with open(list_file) as f:
        ids = [line.strip() for line in f if line.strip()]
    if not ids:
        raise DatasetError(f"PASCAL-Context {split}: the image list {list_file} is empty")
    items = []
    for i in ids:
        img, lbl = os.path.join(img_dir, i + ".jpg"), os.path.join(lbl_dir, i + ".png")
        for path, what in ((img, "image"), (lbl, "mask")):
            if not os.path.isfile(path):
                raise DatasetError(f"PASCAL-Context {split}: {what} of '{i}' (listed in "
                                   f"{list_file}) not found; expected {path}")
        items.append((img, lbl))
    lut = make_lut({v: v - 1 for v in range(1, 60)}, ignore_index)
    return SegmentationDataset(items, lut, transform, 59, ignore_index, PASCAL_CONTEXT_CLASSES,
                               seed, "pascal_context")
