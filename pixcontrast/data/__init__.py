"""Datasets of the reference trainer.

``build_dataset(data_cfg, split, train, seed)`` returns a ``torch.utils.data.Dataset`` of
``(image float32 [3, H, W] normalised, label int64 [H, W])`` with ``num_classes``,
``ignore_index``, ``class_names`` and ``set_epoch(epoch)``. Augmentation randomness comes
from ``(seed, epoch, index)`` only (see ``transforms``).

Datasets: ``cityscapes``, ``camvid``, ``pascal_context``, ``coco_stuff`` (files under
``data.root``, layouts in their modules) and ``synthetic`` (no files).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pixcontrast.data.base import DatasetError, SegmentationDataset
from pixcontrast.data.camvid import camvid
from pixcontrast.data.cityscapes import cityscapes
from pixcontrast.data.coco_stuff import coco_stuff
from pixcontrast.data.pascal_context import pascal_context
from pixcontrast.data.synthetic import SyntheticScenes
from pixcontrast.data.transforms import EvalTransform, TrainTransform

__all__ = ["DATASETS", "DatasetError", "SegmentationDataset", "SyntheticScenes",
           "TrainTransform", "EvalTransform", "build_dataset"]

DATASETS = {"cityscapes": cityscapes, "camvid": camvid, "pascal_context": pascal_context,
            "coco_stuff": coco_stuff}
NUM_CLASSES = {"cityscapes": 19, "camvid": 11, "pascal_context": 59, "coco_stuff": 171}


def build_dataset(data: Mapping[str, Any], split: str, train: bool, seed: int = 0):
    """The dataset named by ``data["dataset"]`` (a config's ``data`` section)."""
    name = data["dataset"]
    ignore = data["ignore_index"]
    if train:
        transform = TrainTransform(data["crop_size"], data["scale_range"], data["base_size"],
                                   data["flip"], data["photometric"], ignore)
    else:
        transform = EvalTransform(data["base_size"])
    if name == "synthetic":
        length = data["num_train"] if train else data["num_val"]
        ds = SyntheticScenes(split, length, transform, data["image_size"],
                             data["num_classes"], data["data_seed"], seed, ignore)
    elif name in DATASETS:
        if not data.get("root"):
            raise DatasetError(f"data.root is not set; dataset '{name}' needs the path of its "
                               "folder (--data.root PATH)")
        ds = DATASETS[name](data["root"], split, transform, ignore, seed)
    else:
        raise ValueError(f"unknown data.dataset '{name}'; known: "
                         f"{', '.join(sorted(DATASETS) + ['synthetic'])}")
    if ds.num_classes != data["num_classes"]:
        raise ValueError(f"data.num_classes={data['num_classes']} but dataset '{name}' has "
                         f"{ds.num_classes} classes")
    return ds
