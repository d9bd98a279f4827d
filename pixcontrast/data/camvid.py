"""CamVid, the common SegNet layout: ``<split>/*.png`` images and ``<split>annot/*.png``
labels (``train``, ``val``, ``test``) holding ids 0–10 for the 11 classes and 11 for void
(→ ``ignore_index``)."""

from __future__ import annotations

import os

from pixcontrast.data.base import SegmentationDataset, make_lut, paired_files, require_dir

__all__ = ["CAMVID_CLASSES", "camvid"]

CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence",
                  "car", "pedestrian", "bicyclist")


def camvid(root: str, split: str, transform, ignore_index: int = 255, seed: int = 0
           ) -> SegmentationDataset:
    require_dir(root, f"CamVid root (with {split}/ and {split}annot/)")
    items = paired_files(os.path.join(root, split), os.path.join(root, split + "annot"),
                         ".png", ".png", f"CamVid {split}")
    return SegmentationDataset(items, make_lut(range(11), ignore_index), transform, 11,
                               ignore_index, CAMVID_CLASSES, seed, "camvid")
