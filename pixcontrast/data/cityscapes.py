"""Cityscapes, official layout: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and
``gtFine/<split>/<city>/*_gtFine_labelIds.png``; the 34 label ids map to the 19 train ids,
every other id (void, ``license plate`` …) to ``ignore_index``."""

from __future__ import annotations

import os

from pixcontrast.data.base import SegmentationDataset, make_lut, paired_files, require_dir

__all__ = ["CITYSCAPES_CLASSES", "CITYSCAPES_LABEL_IDS", "cityscapes"]

CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                      "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                      "truck", "bus", "train", "motorcycle", "bicycle")
# label id of train id i
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def cityscapes(root: str, split: str, transform, ignore_index: int = 255, seed: int = 0
               ) -> SegmentationDataset:
    require_dir(root, "Cityscapes root (with leftImg8bit/ and gtFine/)")
    items = paired_files(os.path.join(root, "leftImg8bit", split),
                         os.path.join(root, "gtFine", split), "_leftImg8bit.png",
                         "_gtFine_labelIds.png", f"Cityscapes {split}", recursive=True)
    return SegmentationDataset(items, make_lut(CITYSCAPES_LABEL_IDS, ignore_index), transform,
                               19, ignore_index, CITYSCAPES_CLASSES, seed, "cityscapes")
