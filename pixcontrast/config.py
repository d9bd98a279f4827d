"""YAML configs of the reference trainer, with ``--section.key value`` overrides.

A config is a two-level mapping ``{section: {key: value}}`` (plus a few top-level scalars
such as ``seed``). Every key must exist in :data:`DEFAULTS`; an unknown section or key,
in the file or on the command line, raises with its dotted name, so a typo never passes
silently. Override values are parsed as YAML scalars (``--optim.lr 1e-3`` → float,
``--train.amp null`` → None, ``--data.crop_size [512,1024]`` → list).

    cfg = load_config("configs/synthetic.yaml", ["--train.iterations", "100"])
    cfg["optim"]["lr"]
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

__all__ = ["DEFAULTS", "ConfigError", "load_config", "merge", "apply_overrides",
           "parse_overrides"]


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` (no dot, YAML 1.1 says string) as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _yaml_load(text):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


class ConfigError(ValueError):
    """A config file, key or value that cannot be used (the message names it)."""


DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "data": {
        "dataset": "synthetic",        # cityscapes | camvid | pascal_context | coco_stuff | synthetic
        "root": None,                  # dataset folder (not used by synthetic)
        "num_classes": 19,
        "ignore_index": 255,
        "train_split": "train",
        "val_split": "val",
        "crop_size": [512, 1024],      # [H, W] training crop
        "scale_range": [0.5, 2.0],     # random rescale factor
        "base_size": None,             # resize the long side to this before the random scale
        "flip": True,
        "photometric": True,
        "batch_size": 8,               # per process
        "val_batch_size": 1,
        "num_workers": 4,
        # synthetic only
        "image_size": 64,
        "num_train": 4000,
        "num_val": 100,
        "data_seed": 0,
    },
    "model": {
        "name": "hrnet_w48",
        "proj_dim": 256,
        "pretrained": None,
        "options": {},                 # extra keyword arguments of build_model
        "sync_bn": True,               # SyncBatchNorm under torch.distributed
    },
    "loss": {
        "contrast": True,              # False: plain cross-entropy (+aux)
        "loss_weight": 0.1,
        "warmup_iters": 5000,          # contrast term starts here (bank fed before)
        "temperature": 0.1,
        "base_temperature": 0.07,
        "max_samples": 1024,
        "max_views": 100,
        "memory_size": 5000,           # per class per queue; 0 = no memory bank
        "pixels_per_update": 10,
        "include_anchors": False,
        "aux_weight": 0.4,
        "ohem": False,
        "ohem_thresh": 0.7,
        "ohem_min_kept": 100000,
        "backend": "auto",
    },
    "optim": {
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "nesterov": False,
        "head_lr_mult": 1.0,           # LR multiplier of everything outside the backbone
        "poly_power": 0.9,
        "warmup_iters": 0,             # linear LR warm-up
        "warmup_ratio": 0.1,           # starting fraction of the LR during warm-up
        "grad_clip": None,             # max global grad norm, None = off
    },
    "train": {
        "iterations": 40000,
        "amp": None,                   # None | bf16 | fp16
        "device": "auto",              # auto | cpu | cuda
        "val_interval": 4000,          # 0 = only at the end
        "log_interval": 50,
        "checkpoint_interval": 4000,   # last.pth; 0 = only at the end
        "progress": True,              # tqdm bar on rank 0
        "tensorboard": True,
        "deterministic": False,        # torch.use_deterministic_algorithms
    },
    "eval": {
        "mode": "whole",               # whole | slide
        "crop_size": None,             # slide window [H, W]; None = data.crop_size
        "stride": None,                # slide stride [H, W]; None = 2/3 of the window
        "scales": [1.0],               # multi-scale inference
        "flip": False,                 # add horizontally flipped predictions
    },
}


def merge(base: Mapping[str, Any], update: Mapping[str, Any], where: str = "") -> dict:
    """Recursively merge ``update`` into a deep copy of ``base``; unknown keys raise."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        name = f"{where}{key}"
        if key not in out:
            raise ConfigError(f"unknown config key '{name}' (known here: "
                              f"{', '.join(sorted(out))})")
        if isinstance(out[key], dict) and key != "options":
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{name}' must be a mapping of "
                                  f"{sorted(out[key])}, got {value!r}")
            out[key] = merge(out[key], value, f"{name}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """``["--optim.lr", "0.1", "--seed=3"]`` → ``{"optim.lr": 0.1, "seed": 3}``."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"expected an override '--section.key value', got {arg!r}")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"override {arg} has no value")
            key, raw = arg[2:], args[i + 1]
            i += 2
        try:
            out[key] = _yaml_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse the value of --{key}: {raw!r} ({exc})") from None
    return out


def apply_overrides(cfg: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``"optim.lr"``) in a copy of ``cfg``; unknown keys raise."""
    cfg = copy.deepcopy(cfg)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = cfg
        for depth, part in enumerate(parts):
            name = ".".join(parts[:depth + 1])
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"unknown config key '{dotted}' (no '{name}')")
            if depth == len(parts) - 1:
                if isinstance(node[part], dict) and part != "options":
                    raise ConfigError(f"'{dotted}' is a section; override one of its keys: "
                                      f"{', '.join(sorted(node[part]))}")
                node[part] = value
            else:
                node = node[part]
    return cfg


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] | Mapping | None = None
                ) -> dict[str, Any]:
    """Defaults ← YAML file ← overrides (CLI strings or a ``{"a.b": value}`` mapping)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        with open(path) as f:
            try:
                data = _yaml_load(f) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"config file {path} must hold a mapping of sections, "
                              f"got {type(data).__name__}")
        try:
            cfg = merge(cfg, data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if overrides:
        if not isinstance(overrides, Mapping):
            overrides = parse_overrides(list(overrides))
        cfg = apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def validate(cfg: Mapping[str, Any]) -> None:
    """Type and range checks of the values the trainer relies on."""
    def need(cond: bool, key: str, what: str) -> None:
        if not cond:
            section, _, name = key.partition(".")
            value = cfg[section][name] if name else cfg[section]
            raise ConfigError(f"config key '{key}' must be {what}, got {value!r}")

    def pair(v: Any) -> bool:
        return (isinstance(v, (list, tuple)) and len(v) == 2
                and all(isinstance(x, int) and x > 0 for x in v))

    d, o, t, e, lo = cfg["data"], cfg["optim"], cfg["train"], cfg["eval"], cfg["loss"]
    need(isinstance(cfg["seed"], int), "seed", "an int")
    need(isinstance(d["num_classes"], int) and d["num_classes"] > 0, "data.num_classes",
         "a positive int")
    need(pair(d["crop_size"]) or (isinstance(d["crop_size"], int) and d["crop_size"] > 0),
         "data.crop_size", "[H, W] or an int")
    need(isinstance(d["scale_range"], (list, tuple)) and len(d["scale_range"]) == 2
         and 0 < d["scale_range"][0] <= d["scale_range"][1], "data.scale_range",
         "[min, max] with 0 < min ≤ max")
    need(isinstance(d["batch_size"], int) and d["batch_size"] > 0, "data.batch_size",
         "a positive int")
    need(isinstance(t["iterations"], int) and t["iterations"] > 0, "train.iterations",
         "a positive int")
    need(t["amp"] in (None, False, "bf16", "fp16"), "train.amp", "null, 'bf16' or 'fp16'")
    need(t["device"] in ("auto", "cpu", "cuda"), "train.device", "'auto', 'cpu' or 'cuda'")
    need(isinstance(o["lr"], (int, float)) and o["lr"] > 0, "optim.lr", "a positive number")
    need(o["grad_clip"] is None or (isinstance(o["grad_clip"], (int, float))
                                    and o["grad_clip"] > 0), "optim.grad_clip",
         "null or a positive number")
    need(e["mode"] in ("whole", "slide"), "eval.mode", "'whole' or 'slide'")
    need(isinstance(e["scales"], (list, tuple)) and len(e["scales"]) > 0
         and all(isinstance(s, (int, float)) and s > 0 for s in e["scales"]), "eval.scales",
         "a non-empty list of positive numbers")
    need(isinstance(lo["memory_size"], int) and lo["memory_size"] >= 0, "loss.memory_size",
         "an int ≥ 0")
    need(isinstance(d["ignore_index"], int) and not 0 <= d["ignore_index"] < d["num_classes"],
         "data.ignore_index", "an int outside [0, num_classes)")
