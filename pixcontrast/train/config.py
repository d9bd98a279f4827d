"""YAML configs of the reference trainer, with ``--section.key value`` overrides.

A config is a two-level mapping ``{section: {key: value}}`` (plus a few top-level scalars
such as ``seed``). Every key must exist in :data:`DEFAULTS`; an unknown section or key,
in the file or on the command line, raises with its dotted name, so a typo never passes
silently. Override values are parsed as YAML scalars (``--optim.lr 1e-3`` → float,
``--train.amp null`` → None, ``--data.crop_size [512,1024]`` → list).

    cfg = load_config("configs/synthetic.yaml", ["--train.iterations", "100"])
    cfg["optim"]["lr"]

The ``loss`` section is not written out here: its keys and defaults are the constructor
arguments of :class:`~pixcontrast.losses.ContrastCELoss` and
:class:`~pixcontrast.losses.PixelContrastLoss` (``inspect.signature``), so each loss
default lives in one place, the loss module. The trainer adds its own switch
``loss.contrast`` and overrides one library default, :data:`TRAINER_LOSS_DEFAULTS`
(``memory_size``). :func:`loss_arguments` splits a resolved section back into the two
constructors' keyword arguments.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from pixcontrast.losses import ContrastCELoss, PixelContrastLoss

__all__ = ["DEFAULTS", "ConfigError", "load_config", "merge", "apply_overrides",
           "parse_overrides", "validate", "loss_defaults", "loss_arguments",
           "TRAINER_LOSS_DEFAULTS"]


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


# --- loss section: derived from the loss modules' constructors --------------------------
# The two constructors whose keyword arguments make up the ``loss`` section, outermost first
# (the order of the section's keys follows it).
LOSS_MODULES = (ContrastCELoss, PixelContrastLoss)
# Constructor arguments that are not loss-section keys: set from other sections
# (data.num_classes, data.ignore_index, model.proj_dim) or built by the trainer (the contrast
# module of ContrastCELoss) ...
_WIRED = frozenset({"num_classes", "ignore_index", "dim", "contrast"})
# ... or not exposed by the YAML config (memory_dtype is a torch.dtype; ce_weight has never
# been a trainer key). Listing one of these here is what keeps it out of the config.
_NOT_IN_CONFIG = frozenset({"memory_dtype", "ce_weight"})
# Keys of the loss section that belong to the trainer, not to a constructor.
_TRAINER_LOSS_KEYS = {"contrast": True}   # False: plain cross-entropy (+aux), no bank
# Loss defaults the trainer deliberately sets differently from the library. The trainer has
# always run the paper's bank (5000 entries per class and queue) when a config leaves
# loss.memory_size out; PixelContrastLoss's own default is 0 (no bank).
TRAINER_LOSS_DEFAULTS: dict[str, Any] = {"memory_size": 5000}


def _constructor_keys(cls: type) -> dict[str, Any]:
    """``{name: default}`` of the config-exposed keyword arguments of ``cls.__init__``."""
    out = {}
    for name, p in inspect.signature(cls).parameters.items():
        if (name in _WIRED or name in _NOT_IN_CONFIG
                or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)):
            continue
        if p.default is p.empty:
            raise TypeError(f"{cls.__name__} argument '{name}' has no default: the trainer "
                            f"cannot fill it from the config (wire it in train/builders.py "
                            f"and list it in config._WIRED)")
        if not isinstance(p.default, (bool, int, float, str, type(None))):
            raise TypeError(f"{cls.__name__} argument '{name}' defaults to {p.default!r}, "
                            f"not a YAML scalar: list it in config._NOT_IN_CONFIG or wire it")
        out[name] = p.default
    return out


def _loss_keys() -> dict[type, dict[str, Any]]:
    keys = {cls: _constructor_keys(cls) for cls in LOSS_MODULES}
    seen: dict[str, type] = {}
    for cls, names in keys.items():
        for name in names:
            if name in seen or name in _TRAINER_LOSS_KEYS:
                other = seen[name].__name__ if name in seen else "the trainer"
                raise TypeError(f"loss argument '{name}' of {cls.__name__} is also an "
                                f"argument of {other}: one config key cannot set both")
            seen[name] = cls
    unknown = set(TRAINER_LOSS_DEFAULTS) - set(seen)
    if unknown:
        raise TypeError(f"TRAINER_LOSS_DEFAULTS names {sorted(unknown)}, which no loss "
                        f"module takes")
    return keys


def loss_defaults() -> dict[str, Any]:
    """The ``loss`` section's defaults: the trainer's keys, then every config-exposed
    argument of the loss constructors with its signature default (or the trainer's
    override from :data:`TRAINER_LOSS_DEFAULTS`)."""
    out = dict(_TRAINER_LOSS_KEYS)
    for names in _loss_keys().values():
        out.update({k: TRAINER_LOSS_DEFAULTS.get(k, v) for k, v in names.items()})
    return out


def loss_arguments(loss: Mapping[str, Any]) -> dict[type, dict[str, Any]]:
    """Split a resolved ``loss`` section into ``{LossClass: kwargs}`` (trainer keys such as
    ``contrast`` left out); the wired arguments (num_classes, ignore_index, dim, contrast)
    are the caller's to add."""
    return {cls: {k: loss[k] for k in names} for cls, names in _loss_keys().items()}


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
    "loss": loss_defaults(),           # contrast + the loss constructors' arguments
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
