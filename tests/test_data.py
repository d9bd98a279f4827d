"""Datasets (on tiny fake copies of each layout), augmentation and configs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from pixcontrast.train.config import ConfigError, load_config, parse_overrides
from pixcontrast.data import DatasetError, EvalTransform, TrainTransform, build_dataset
from pixcontrast.data.camvid import camvid
from pixcontrast.data.cityscapes import CITYSCAPES_LABEL_IDS, cityscapes
from pixcontrast.data.coco_stuff import COCO_STUFF_CLASSES, COCO_STUFF_UNUSED_IDS, coco_stuff
from pixcontrast.data.pascal_context import PASCAL_CONTEXT_CLASSES, pascal_context
from pixcontrast.data.synthetic import SyntheticScenes, make_scene
from pixcontrast.data.transforms import IMAGENET_MEAN, IMAGENET_STD

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
H, W = 12, 20


def _write(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _image(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _raw_labels(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    return rng.choice(values, size=(H, W)).astype(np.uint8)


def _undo_eval(image: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((image * std + mean) * 255).round().permute(1, 2, 0).numpy().astype(np.uint8)


# ---------------------------------------------------------------------------------------
# Real layouts
# ---------------------------------------------------------------------------------------

def test_cityscapes_layout_and_label_mapping(tmp_path):
    rng = np.random.default_rng(0)
    raws = {}
    for city, n in (("aachen", 2), ("bochum", 1)):
        for i in range(n):
            stem = f"{city}_{i:06d}_000019"
            img = _image(rng)
            raw = _raw_labels(rng, np.arange(0, 34))            # every label id, void too
            raw[0, 0], raw[0, 1] = 7, 33                         # road, bicycle
            _write(str(tmp_path / "leftImg8bit/train" / city / f"{stem}_leftImg8bit.png"), img)
            _write(str(tmp_path / "gtFine/train" / city / f"{stem}_gtFine_labelIds.png"), raw)
            raws[stem] = (img, raw)
    ds = cityscapes(str(tmp_path), "train", EvalTransform())
    assert len(ds) == 3 and ds.num_classes == 19
    for idx, (img_path, _) in enumerate(ds.items):
        stem = os.path.basename(img_path).replace("_leftImg8bit.png", "")
        img, raw = raws[stem]
        image, label = ds[idx]
        assert image.shape == (3, H, W) and label.dtype == torch.int64
        np.testing.assert_array_equal(_undo_eval(image), img)
        expected = np.full_like(raw, 255, dtype=np.int64)
        for train_id, label_id in enumerate(CITYSCAPES_LABEL_IDS):
            expected[raw == label_id] = train_id
        np.testing.assert_array_equal(label.numpy(), expected)
        assert label[0, 0] == 0 and label[0, 1] == 18
        assert (label[torch.from_numpy(raw == 0)] == 255).all()   # unlabeled → ignore


def test_camvid_segnet_layout(tmp_path):
    rng = np.random.default_rng(1)
    raw = _raw_labels(rng, np.arange(12))
    _write(str(tmp_path / "val/0001TP_008550.png"), _image(rng))
    _write(str(tmp_path / "valannot/0001TP_008550.png"), raw)
    ds = camvid(str(tmp_path), "val", EvalTransform())
    _, label = ds[0]
    assert ds.num_classes == 11 and len(ds.class_names) == 11
    expected = np.where(raw == 11, 255, raw)
    np.testing.assert_array_equal(label.numpy(), expected)


def test_pascal_context_background_ignored(tmp_path):
    rng = np.random.default_rng(2)
    raw = _raw_labels(rng, np.arange(60))
    _write(str(tmp_path / "JPEGImages/2008_000002.jpg"), _image(rng))
    _write(str(tmp_path / "SegmentationClassContext/2008_000002.png"), raw)
    os.makedirs(tmp_path / "ImageSets/SegmentationContext")
    (tmp_path / "ImageSets/SegmentationContext/val.txt").write_text("2008_000002\n")
    ds = pascal_context(str(tmp_path), "val", EvalTransform())
    _, label = ds[0]
    assert ds.num_classes == 59 == len(PASCAL_CONTEXT_CLASSES)
    np.testing.assert_array_equal(label.numpy(), np.where(raw == 0, 255, raw.astype(int) - 1))


def test_coco_stuff_164k_mapping(tmp_path):
    rng = np.random.default_rng(3)
    raw = _raw_labels(rng, np.r_[np.arange(182), 255])
    raw[0, :3] = (0, 11, 181)        # person, an unused id, the last stuff class
    _write(str(tmp_path / "images/val2017/000000000139.jpg"), _image(rng))
    _write(str(tmp_path / "annotations/val2017/000000000139.png"), raw)
    ds = coco_stuff(str(tmp_path), "val", EvalTransform())
    _, label = ds[0]
    assert ds.num_classes == 171 == len(COCO_STUFF_CLASSES)
    assert label[0, :3].tolist() == [0, 255, 170]
    used = [i for i in range(182) if i not in COCO_STUFF_UNUSED_IDS]
    expected = np.full(raw.shape, 255)
    for train_id, stored in enumerate(used):
        expected[raw == stored] = train_id
    np.testing.assert_array_equal(label.numpy(), expected)


def test_missing_and_malformed_datasets_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=str(missing)):
        cityscapes(str(missing), "train", EvalTransform())
    # images without their labels
    _write(str(tmp_path / "cs/leftImg8bit/val/x/a_leftImg8bit.png"), np.zeros((4, 4, 3), np.uint8))
    os.makedirs(tmp_path / "cs/gtFine/val/x")
    with pytest.raises(DatasetError, match="a_gtFine_labelIds.png"):
        cityscapes(str(tmp_path / "cs"), "val", EvalTransform())
    # an empty split
    os.makedirs(tmp_path / "cv/train")
    os.makedirs(tmp_path / "cv/trainannot")
    with pytest.raises(DatasetError, match=r"no '\*\.png' images found under .*cv/train"):
        camvid(str(tmp_path / "cv"), "train", EvalTransform())
    # PASCAL-Context list pointing at a missing image
    os.makedirs(tmp_path / "pc/ImageSets/SegmentationContext")
    os.makedirs(tmp_path / "pc/JPEGImages")
    os.makedirs(tmp_path / "pc/SegmentationClassContext")
    (tmp_path / "pc/ImageSets/SegmentationContext/train.txt").write_text("img1\n")
    with pytest.raises(DatasetError, match="img1.jpg"):
        pascal_context(str(tmp_path / "pc"), "train", EvalTransform())
    # an RGB label and a size mismatch are malformed
    _write(str(tmp_path / "bad/val/a.png"), np.zeros((4, 4, 3), np.uint8))
    _write(str(tmp_path / "bad/valannot/a.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match="single-channel"):
        camvid(str(tmp_path / "bad"), "val", EvalTransform())[0]
    _write(str(tmp_path / "bad/valannot/a.png"), np.zeros((5, 4), np.uint8))
    with pytest.raises(DatasetError, match="4×5 but image"):
        camvid(str(tmp_path / "bad"), "val", EvalTransform())[0]
    # no root configured
    cfg = load_config(os.path.join(CONFIGS, "cityscapes_hrnet_w48.yaml"))
    with pytest.raises(DatasetError, match="expected a directory at data/cityscapes"):
        build_dataset(cfg["data"], "train", train=True)
    with pytest.raises(DatasetError, match="data.root"):
        build_dataset({**cfg["data"], "root": None}, "train", train=True)


# ---------------------------------------------------------------------------------------
# Synthetic scenes
# ---------------------------------------------------------------------------------------

def test_synthetic_is_deterministic_and_varies_between_images():
    a = SyntheticScenes("train", 10, EvalTransform(), 64, 5, seed=3)
    b = SyntheticScenes("train", 10, EvalTransform(), 64, 5, seed=3)
    c = SyntheticScenes("train", 10, EvalTransform(), 64, 5, seed=4)
    v = SyntheticScenes("val", 10, EvalTransform(), 64, 5, seed=3)
    for i in (0, 7):
        torch.testing.assert_close(a[i], b[i], rtol=0, atol=0)
        assert not torch.equal(a[i][0], c[i][0])
        assert not torch.equal(a[i][0], v[i][0])
    # every class appears, labels in range, more than one class per scene
    labels = torch.stack([a[i][1] for i in range(10)])
    assert set(labels.unique().tolist()) == set(range(5))
    assert all(a[i][1].unique().numel() >= 2 for i in range(10))
    # the appearance of a class varies from image to image: its mean colour differs
    colours = []
    for i in range(40):
        img, lbl = make_scene(np.random.default_rng([0, i]), 64, 5)
        m = lbl == 1
        if m.sum() > 100:
            colours.append(img[m].mean(0))
    assert len(colours) >= 5 and np.std(np.array(colours), axis=0).mean() > 20
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticScenes("train", 10, EvalTransform(), 64, 9)


# ---------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------

def test_train_transform_scale_crop_pad_flip():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    label = np.tile(np.arange(40) % 7, (30, 1))           # column id → flips are visible
    t = TrainTransform((48, 64), scale_range=(0.5, 0.5), flip=False, photometric=False,
                       ignore_index=255)
    img, lbl = t(image, label, np.random.default_rng(1))
    assert img.shape == (3, 48, 64) and lbl.shape == (48, 64)
    # the 15×20 rescaled image sits in the top-left corner; the rest is ignore padding
    assert (lbl[15:] == 255).all() and (lbl[:, 20:] == 255).all()
    assert (lbl[:15, :20] != 255).all()
    torch.testing.assert_close(img[:, 20:, :], torch.zeros(3, 28, 64), atol=1e-5, rtol=0)
    # flip: same rng draws → the flipped crop
    tf = TrainTransform((20, 30), scale_range=(1.0, 1.0), flip=True, photometric=False)
    tn = TrainTransform((20, 30), scale_range=(1.0, 1.0), flip=False, photometric=False)
    flips = 0
    for s in range(8):
        a = tf(image, label, np.random.default_rng(s))
        b = tn(image, label, np.random.default_rng(s))
        if torch.equal(a[1], b[1].flip(-1)) and not torch.equal(a[1], b[1]):
            flips += 1
            torch.testing.assert_close(a[0], b[0].flip(-1))
        else:
            assert torch.equal(a[1], b[1])
    assert 0 < flips < 8
    # scale range: large scales give crops of a bigger image; labels stay integer ids
    big = TrainTransform((16, 16), scale_range=(2.0, 2.0), photometric=True)
    img, lbl = big(image, label, np.random.default_rng(5))
    assert set(lbl.unique().tolist()) <= set(range(7))
    # same seed → same sample
    torch.testing.assert_close(big(image, label, np.random.default_rng(5)), (img, lbl))


def test_photometric_jitter_changes_colours_not_labels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    label = rng.integers(0, 3, (16, 16))
    plain = TrainTransform(16, (1.0, 1.0), flip=False, photometric=False)
    jitter = TrainTransform(16, (1.0, 1.0), flip=False, photometric=True)
    changed = 0
    for s in range(6):
        a, la = plain(image, label, np.random.default_rng(s))
        b, lb = jitter(image, label, np.random.default_rng(s))
        assert torch.equal(la, lb)
        changed += not torch.allclose(a, b)
    assert changed >= 3


# ---------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------

def test_every_config_loads_and_names_a_model():
    from pixcontrast.models import MODEL_NAMES

    names = sorted(f for f in os.listdir(CONFIGS) if f.endswith(".yaml"))
    assert "synthetic.yaml" in names and len(names) >= 8
    for name in names:
        cfg = load_config(os.path.join(CONFIGS, name))
        assert cfg["model"]["name"] in MODEL_NAMES, name


def test_overrides_are_typed_and_unknown_keys_raise(tmp_path):
    path = os.path.join(CONFIGS, "synthetic.yaml")
    cfg = load_config(path, ["--optim.lr", "0.5", "--train.amp", "null", "--loss.contrast",
                             "false", "--data.crop_size=[32,48]", "--seed", "7"])
    assert cfg["optim"]["lr"] == 0.5 and cfg["train"]["amp"] is None
    assert cfg["loss"]["contrast"] is False and cfg["data"]["crop_size"] == [32, 48]
    assert cfg["seed"] == 7
    assert parse_overrides(["--a.b", "1e-3"]) == {"a.b": 1e-3}
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config(path, ["--optim.lrr", "1"])
    with pytest.raises(ConfigError, match="'train.amp' must be"):
        load_config(path, ["--train.amp", "fp8"])
    with pytest.raises(ConfigError, match="no value"):
        load_config(path, ["--optim.lr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'optim.learning_rate'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_loss_section_comes_from_the_loss_signatures(tmp_path):
    """Each loss default lives in the loss module: the config's loss section is the
    trainer's switch ``contrast`` plus the loss constructors' arguments with their
    signature defaults, except the one the trainer overrides (memory_size: 5000, the
    paper's bank; the library's default is 0)."""
    import inspect

    from pixcontrast.losses import ContrastCELoss, PixelContrastLoss
    from pixcontrast.train.config import DEFAULTS, TRAINER_LOSS_DEFAULTS

    loss = DEFAULTS["loss"]
    # the keys the trainer has always accepted (no more, no fewer)
    assert set(loss) == {"contrast", "loss_weight", "warmup_iters", "temperature",
                         "base_temperature", "max_samples", "max_views", "memory_size",
                         "pixels_per_update", "include_anchors", "aux_weight", "ohem",
                         "ohem_thresh", "ohem_min_kept", "backend", "mining",
                         "num_negatives", "num_positives", "semi_hard_fraction", "loss"}
    assert loss["contrast"] is True
    assert TRAINER_LOSS_DEFAULTS == {"memory_size": 5000} and loss["memory_size"] == 5000
    for cls in (ContrastCELoss, PixelContrastLoss):
        for name, p in inspect.signature(cls).parameters.items():
            # (ContrastCELoss's ``contrast`` is the module the trainer builds, not the switch)
            if name in loss and name not in TRAINER_LOSS_DEFAULTS and name != "contrast":
                assert loss[name] == p.default and type(loss[name]) is type(p.default), name
    assert inspect.signature(PixelContrastLoss).parameters["memory_size"].default == 0
    # unknown loss keys still raise naming the key, in a file and on the command line
    path = os.path.join(CONFIGS, "synthetic.yaml")
    with pytest.raises(ConfigError, match="loss.memory_dtype"):
        load_config(path, ["--loss.memory_dtype", "bfloat16"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  temprature: 0.2\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'loss.temprature'"):
        load_config(bad)
    # a config without loss.memory_size gets the trainer's 5000, one with it keeps its value
    bare = tmp_path / "bare.yaml"
    bare.write_text("loss:\n  temperature: 0.2\n")
    assert load_config(bare)["loss"]["memory_size"] == 5000
    assert load_config(path)["loss"]["memory_size"] == 500
