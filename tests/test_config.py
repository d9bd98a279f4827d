"""Config validation: every key is checked when the config loads (types, ranges, known
names, the combinations the builders need), each error naming the key, so that a bad value
stops a run at once instead of after the data, the model or the contrast warm-up."""

from __future__ import annotations

import math
import os

import pytest

from pixcontrast.train.config import DEFAULTS, ConfigError, _CHECKS, _keys, load_config

ROOT = os.path.join(os.path.dirname(__file__), "..")
SYNTHETIC = os.path.join(ROOT, "configs", "synthetic.yaml")
CITYSCAPES = os.path.join(ROOT, "configs", "cityscapes_hrnet_w48.yaml")

# (override, the key the error must name). Values as the command line gives them (YAML).
BAD = [
    ("loss.temperature", "0"), ("loss.temperature", "'0.1'"), ("loss.temperature", "-0.1"),
    ("loss.temperature", ".nan"), ("loss.base_temperature", "0"),
    ("loss.loss_weight", "-0.1"), ("loss.aux_weight", "'0.4'"), ("loss.warmup_iters", "-1"),
    ("loss.warmup_iters", "1.5"), ("loss.max_samples", "0"), ("loss.max_views", "0"),
    ("loss.memory_size", "-1"), ("loss.pixels_per_update", "0"), ("loss.ohem", "'no'"),
    ("loss.ohem_thresh", "1.5"), ("loss.ohem_min_kept", "-1"), ("loss.include_anchors", "1"),
    ("loss.backend", "gpu"), ("loss.contrast", "'false'"),
    ("loss.mining", "hard"), ("loss.mining", "true"), ("loss.num_negatives", "0"),
    ("loss.num_positives", "1.5"), ("loss.semi_hard_fraction", "0"),
    ("loss.semi_hard_fraction", "1.5"), ("loss.loss", "triplet"),
    ("data.dataset", "cityscape"), ("data.num_classes", "0"), ("data.num_classes", "9"),
    ("data.ignore_index", "3"), ("data.crop_size", "[32]"), ("data.crop_size", "[0,32]"),
    ("data.scale_range", "[2.0,1.0]"), ("data.base_size", "0"), ("data.flip", "'yes'"),
    ("data.batch_size", "0"), ("data.val_batch_size", "0"), ("data.num_workers", "-1"),
    ("data.image_size", "0"), ("data.num_train", "0"), ("data.num_val", "0"),
    ("data.train_split", "tain"), ("data.val_split", "''"), ("data.data_seed", "-1"),
    ("model.name", "hrnet"), ("model.proj_dim", "-1"), ("model.pretrained", "''"),
    ("model.options", "[1]"), ("model.sync_bn", "'true'"),
    ("optim.lr", "0"), ("optim.lr", "'0.01'"), ("optim.momentum", "-0.9"),
    ("optim.weight_decay", "-1e-4"), ("optim.nesterov", "'no'"), ("optim.head_lr_mult", "-1"),
    ("optim.poly_power", "-0.9"), ("optim.warmup_iters", "-1"), ("optim.warmup_ratio", "1.5"),
    ("optim.grad_clip", "0"),
    ("train.iterations", "0"), ("train.amp", "fp8"), ("train.amp", "true"),
    ("train.device", "gpu"), ("train.val_interval", "-1"), ("train.log_interval", "'50'"),
    ("train.checkpoint_interval", "-1"), ("train.progress", "'auto'"),
    ("train.tensorboard", "'no'"), ("train.deterministic", "0"),
    ("eval.mode", "sliding"), ("eval.crop_size", "[24,0]"), ("eval.stride", "[8]"),
    ("eval.scales", "[]"), ("eval.scales", "[0.5,-1]"), ("eval.flip", "'no'"),
    ("seed", "-1"), ("seed", "'0'"),
]


@pytest.mark.parametrize("key,raw", BAD)
def test_bad_value_is_refused_at_load_naming_the_key(key, raw):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(SYNTHETIC, [f"--{key}", raw])


def test_string_numbers_get_a_hint_and_the_message_shows_the_value():
    with pytest.raises(ConfigError) as exc:
        load_config(SYNTHETIC, ["--loss.temperature", "'0.1'"])
    assert str(exc.value) == ("config key 'loss.temperature' must be a finite number > 0, "
                              "got '0.1' (a string: write the number without quotes)")
    with pytest.raises(ConfigError, match=r"'loss.temperature' must be .*, got 0$"):
        load_config(SYNTHETIC, ["--loss.temperature", "0"])


def test_combinations_and_dataset_facts(tmp_path):
    # the contrast needs an embedding
    with pytest.raises(ConfigError, match="'model.proj_dim' must be > 0 while loss.contrast"):
        load_config(SYNTHETIC, ["--model.proj_dim", "0"])
    load_config(SYNTHETIC, ["--model.proj_dim", "0", "--loss.contrast", "false"])
    with pytest.raises(ConfigError, match="'model.options.proj_head' is null"):
        load_config(SYNTHETIC, ["--model.options", "{proj_head: null}"])
    with pytest.raises(ConfigError, match="'model.options.proj_head' must be one of"):
        load_config(SYNTHETIC, ["--model.options", "{proj_head: mlp}"])
    with pytest.raises(ConfigError, match="'model.options' has unknown option.*aux_head"):
        load_config(SYNTHETIC, ["--model.options", "{aux_head: true}"])   # DeepLab's, not HRNet's
    load_config(SYNTHETIC, ["--model.name", "deeplabv3_tiny", "--model.options",
                            "{aux_head: false}"])
    with pytest.raises(ConfigError, match="'optim.momentum' must be > 0 with optim.nesterov"):
        load_config(SYNTHETIC, ["--optim.nesterov", "true", "--optim.momentum", "0"])
    # a file dataset: its number of classes, and a root
    with pytest.raises(ConfigError, match="'data.num_classes' must be 19, the number of "
                                          "classes of dataset 'cityscapes', got 5"):
        load_config(CITYSCAPES, ["--data.num_classes", "5"])
    with pytest.raises(ConfigError, match="'data.root' must be the folder of dataset"):
        load_config(CITYSCAPES, ["--data.root", "null"])
    # good values of every kind still load
    cfg = load_config(SYNTHETIC, ["--eval.stride", "16", "--eval.crop_size", "24",
                                  "--train.amp", "bf16", "--loss.temperature", "1",
                                  "--optim.grad_clip", "10", "--data.base_size", "80"])
    assert cfg["eval"]["stride"] == 16 and cfg["loss"]["temperature"] == 1


def test_the_defaults_are_a_valid_config():
    cfg = load_config(None)
    assert cfg["data"]["dataset"] == "synthetic" and cfg["data"]["num_classes"] == 5


def test_every_key_has_a_check():
    """Each key of DEFAULTS has an entry in the check table; a key added later without one
    (a new loss-constructor argument) still gets its default's type checked."""
    keys = _keys(DEFAULTS)
    assert len(keys) > 50
    unchecked = [k for k in keys if k not in _CHECKS and k not in (
        "data.dataset", "model.name")]                       # (name lists, checked apart)
    assert unchecked == []
    assert set(_CHECKS) <= set(keys)


def test_loss_constructor_checks_run_at_load(monkeypatch):
    """The loss modules are built (on the meta device) when the config loads: a check a
    loss constructor makes is reported then, naming the key."""
    import functools

    from pixcontrast.losses import PixelContrastLoss

    init = PixelContrastLoss.__init__

    @functools.wraps(init)               # (the signature, hence the loss keys, unchanged)
    def strict(self, *args, **kwargs):
        if kwargs["max_views"] > kwargs["max_samples"]:
            raise ValueError(f"max_views={kwargs['max_views']} exceeds "
                             f"max_samples={kwargs['max_samples']}")
        init(self, *args, **kwargs)
    monkeypatch.setattr(PixelContrastLoss, "__init__", strict)
    load_config(SYNTHETIC)
    with pytest.raises(ConfigError, match="config key 'loss.max_views' is rejected by the "
                                          "loss module: max_views=600 exceeds"):
        load_config(SYNTHETIC, ["--loss.max_views", "600"])


def test_mining_keys_reach_the_loss_module():
    """The mining/SupCon keys are passed to PixelContrastLoss; combinations it refuses are
    reported at load, naming the key."""
    from pixcontrast.train.builders import build_criterion

    cfg = load_config(SYNTHETIC, ["--loss.mining", "semi-hard", "--loss.num_negatives", "64",
                                  "--loss.loss", "supcon"])
    contrast = build_criterion(cfg).contrast
    assert (contrast.mining, contrast.num_negatives, contrast.num_positives,
            contrast.semi_hard_fraction, contrast.loss) == ("semi-hard", 64, None, 0.1, "supcon")
    with pytest.raises(ConfigError, match="config key 'loss.num_negatives' is rejected"):
        load_config(SYNTHETIC, ["--loss.num_negatives", "64"])
    with pytest.raises(ConfigError, match="config key 'loss.semi_hard_fraction'"):
        load_config(SYNTHETIC, ["--loss.mining", "semi-hard", "--loss.semi_hard_fraction", "0"])


def test_loading_is_cheap():
    """The checks (and the loss built on the meta device) cost milliseconds, even for the
    paper's bank (19 classes × 2 × 5000 × 256 floats: never allocated)."""
    import time

    t0 = time.perf_counter()
    for _ in range(5):
        load_config(CITYSCAPES)
    assert (time.perf_counter() - t0) / 5 < 0.5
    assert math.isfinite(load_config(CITYSCAPES)["loss"]["temperature"])
