"""COCO-Stuff 164k: ``images/<split>2017/*.jpg`` and ``annotations/<split>2017/*.png`` (the
official stuffthingmaps: 0-indexed ids 0–181, 255 unlabelled). The 182 ids hold 11 unused
thing ids; the other 171 map to contiguous train ids 0–170, the rest to ``ignore_index``.
Already-converted ``*_labelTrainIds.png`` masks (0–170) are used as they are."""

from __future__ import annotations

import os

from pixcontrast.data.base import (DatasetError, SegmentationDataset, make_lut, paired_files,
                                   require_dir)

__all__ = ["COCO_STUFF_CLASSES", "COCO_STUFF_UNUSED_IDS", "coco_stuff"]

# 0-indexed stuffthingmap ids of the 11 COCO thing ids that have no annotations
COCO_STUFF_UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)

COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush", "banner", "blanket", "branch", "bridge", "building-other", "bush",
    "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth",
    "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt",
    "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile",
    "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass",
    "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal",
    "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
    "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad",
    "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other",
    "skyscraper", "snow", "solid-other", "stairs", "stone", "straw", "structural-other",
    "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
    "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood",
    "water-other", "waterdrops", "window-blind", "window-other", "wood")

_USED_IDS = tuple(i for i in range(182) if i not in COCO_STUFF_UNUSED_IDS)


def coco_stuff(root: str, split: str, transform, ignore_index: int = 255, seed: int = 0
               ) -> SegmentationDataset:
    require_dir(root, "COCO-Stuff root (with images/ and annotations/)")
    folder = split if split.endswith("2017") else f"{split}2017"
    img_dir = os.path.join(root, "images", folder)
    ann_dir = require_dir(os.path.join(root, "annotations", folder),
                          f"COCO-Stuff {split} annotations")
    converted = any(f.endswith("_labelTrainIds.png") for f in os.listdir(ann_dir))
    items = paired_files(img_dir, ann_dir, ".jpg",
                         "_labelTrainIds.png" if converted else ".png", f"COCO-Stuff {split}")
    lut = make_lut(range(171) if converted else _USED_IDS, ignore_index)
    if len(_USED_IDS) != 171:   # pragma: no cover - guards the table above
        raise DatasetError("COCO-Stuff id table is corrupt")
    return SegmentationDataset(items, lut, transform, 171, ignore_index, COCO_STUFF_CLASSES,
                               seed, "coco_stuff")
