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

Every value is checked when the config loads (:func:`validate`): types, ranges, known
dataset / model / backend names and the combinations the builders need, each error a
``ConfigError`` naming the key; the loss modules are also built on the meta device so
their own constructor checks run then too. What depends on the machine or the files
(the dataset folder, ``train.device: cuda``, ``loss.backend`` on the device, checkpoints)
is checked when the trainer starts, before the model is built.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from pixcontrast.losses import ContrastCELoss, PixelContrastLoss
from pixcontrast.models import CheckpointError

__all__ = ["DEFAULTS", "ConfigError", "CLI_ERRORS", "load_config", "merge", "apply_overrides",
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
        # the dataset's (checked): synthetic 2-8, cityscapes 19, camvid 11, pascal_context 59,
        # coco_stuff 171
        "num_classes": 5,
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
        "progress": True,              # tqdm bar on rank 0, when stderr is a terminal
        "tensorboard": True,
        "deterministic": False,        # torch.use_deterministic_algorithms
    },
    "eval": {
        "mode": "whole",               # whole | slide
        "crop_size": None,             # slide window [H, W]; None = data.crop_size
        "stride": None,                # slide stride [H, W] or an int; None = 2/3 of the window
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


# --- validation ---------------------------------------------------------------------------
# Every key is checked when the config loads, so that a bad value stops the run at once,
# naming the key, instead of in the module that reads it (after the data is indexed, the
# model built, or the contrast warm-up is over). A key without an entry in _CHECKS (a loss
# argument added to a loss constructor later) must at least have its default's type. The
# loss modules are then built on the meta device (no memory) to run their own checks.

def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _size_pair(v: Any) -> bool:
    return (isinstance(v, (list, tuple)) and len(v) == 2
            and all(_int(x) and x > 0 for x in v))


_POS_INT = (lambda v: _int(v) and v > 0, "a positive int")
_NONNEG_INT = (lambda v: _int(v) and v >= 0, "an int ≥ 0")
_POS_NUM = (lambda v: _num(v) and v > 0, "a finite number > 0")
_NONNEG_NUM = (lambda v: _num(v) and v >= 0, "a finite number ≥ 0")
_UNIT_NUM = (lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1]")
_BOOL = (lambda v: isinstance(v, bool), "true or false")
_SIZE = (lambda v: _size_pair(v) or (_int(v) and v > 0), "[H, W] or an int (positive)")
_OPT_SIZE = (lambda v: v is None or _size_pair(v) or (_int(v) and v > 0),
             "null, [H, W] or an int (positive)")
_NAME = (lambda v: isinstance(v, str) and v != "", "a non-empty string")
_OPT_PATH = (lambda v: v is None or (isinstance(v, str) and v != ""), "null or a path")

_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (lambda v: _int(v) and 0 <= v < 2 ** 31, "an int in [0, 2**31)"),
    "data.root": _OPT_PATH,
    "data.num_classes": _POS_INT,
    "data.ignore_index": (_int, "an int"),
    "data.train_split": _NAME,
    "data.val_split": _NAME,
    "data.crop_size": _SIZE,
    "data.scale_range": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2
                         and all(_num(x) for x in v) and 0 < v[0] <= v[1],
                         "[min, max] with 0 < min ≤ max"),
    "data.base_size": (lambda v: v is None or (_int(v) and v > 0), "null or a positive int"),
    "data.flip": _BOOL,
    "data.photometric": _BOOL,
    "data.batch_size": _POS_INT,
    "data.val_batch_size": _POS_INT,
    "data.num_workers": _NONNEG_INT,
    "data.image_size": _POS_INT,
    "data.num_train": _POS_INT,
    "data.num_val": _POS_INT,
    "data.data_seed": _NONNEG_INT,
    "model.name": _NAME,
    "model.proj_dim": _NONNEG_INT,
    "model.pretrained": _OPT_PATH,
    "model.options": (lambda v: v is None or (isinstance(v, Mapping)
                                              and all(isinstance(k, str) for k in v)),
                      "null or a mapping of build_model options"),
    "model.sync_bn": _BOOL,
    "loss.contrast": _BOOL,
    "loss.loss_weight": _NONNEG_NUM,
    "loss.warmup_iters": _NONNEG_INT,
    "loss.aux_weight": _NONNEG_NUM,
    "loss.ohem": _BOOL,
    "loss.ohem_thresh": _UNIT_NUM,
    "loss.ohem_min_kept": _NONNEG_INT,
    "loss.temperature": _POS_NUM,
    "loss.base_temperature": _POS_NUM,
    "loss.max_samples": _POS_INT,
    "loss.max_views": _POS_INT,
    "loss.memory_size": _NONNEG_INT,
    "loss.pixels_per_update": _POS_INT,
    "loss.include_anchors": _BOOL,
    "loss.backend": _NAME,
    "loss.mining": (lambda v: v in (None, "hardest", "semi-hard"),
                    "null, 'hardest' or 'semi-hard'"),
    "loss.num_negatives": (lambda v: v is None or (_int(v) and v > 0), "null or a positive int"),
    "loss.num_positives": (lambda v: v is None or (_int(v) and v > 0), "null or a positive int"),
    "loss.semi_hard_fraction": (lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"),
    "loss.loss": (lambda v: v in ("infonce", "supcon"), "'infonce' or 'supcon'"),
    "optim.lr": _POS_NUM,
    "optim.momentum": _NONNEG_NUM,
    "optim.weight_decay": _NONNEG_NUM,
    "optim.nesterov": _BOOL,
    "optim.head_lr_mult": _NONNEG_NUM,
    "optim.poly_power": _NONNEG_NUM,
    "optim.warmup_iters": _NONNEG_INT,
    "optim.warmup_ratio": _UNIT_NUM,
    "optim.grad_clip": (lambda v: v is None or (_num(v) and v > 0),
                        "null or a finite number > 0"),
    "train.iterations": _POS_INT,
    "train.amp": (lambda v: v is None or v is False or (isinstance(v, str)
                                                        and v in ("bf16", "fp16")),
                  "null, 'bf16' or 'fp16'"),
    "train.device": (lambda v: v in ("auto", "cpu", "cuda"), "'auto', 'cpu' or 'cuda'"),
    "train.val_interval": _NONNEG_INT,
    "train.log_interval": _NONNEG_INT,
    "train.checkpoint_interval": _NONNEG_INT,
    "train.progress": _BOOL,
    "train.tensorboard": _BOOL,
    "train.deterministic": _BOOL,
    "eval.mode": (lambda v: v in ("whole", "slide"), "'whole' or 'slide'"),
    "eval.crop_size": _OPT_SIZE,
    "eval.stride": _OPT_SIZE,
    "eval.scales": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0
                    and all(_num(s) and s > 0 for s in v),
                    "a non-empty list of positive numbers"),
    "eval.flip": _BOOL,
}

# Errors the CLIs report as ``error: …`` with exit status 2 instead of a traceback: a bad
# config, a missing file or dataset (DatasetError is a FileNotFoundError), a checkpoint or
# pretrained file that is unreadable, damaged or does not fit the model.
CLI_ERRORS: tuple[type[Exception], ...] = (ConfigError, CheckpointError, FileNotFoundError)


def _keys(cfg: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        if isinstance(v, dict) and k != "options":
            out += _keys(v, f"{prefix}{k}.")
        else:
            out.append(prefix + k)
    return out


def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _default_type_check(dotted: str) -> tuple[Callable[[Any], bool], str] | None:
    """A type check from the default's type, for a key without an entry in ``_CHECKS``."""
    default = _get(DEFAULTS, dotted)
    if isinstance(default, bool):
        return _BOOL
    if isinstance(default, int):
        return (_int, "an int")
    if isinstance(default, float):
        return (_num, "a finite number")
    if isinstance(default, str):
        return (lambda v: isinstance(v, str), "a string")
    return None


def _fail(key: str, value: Any, what: str) -> ConfigError:
    hint = ""
    if isinstance(value, str):
        try:
            float(value)
            hint = " (a string: write the number without quotes)"
        except ValueError:
            pass
    return ConfigError(f"config key '{key}' must be {what}, got {value!r}{hint}")


def validate(cfg: Mapping[str, Any]) -> None:
    """Check every key of a resolved config (types, ranges, known names, the combinations
    the builders need); ``ConfigError`` naming the first bad key."""
    from pixcontrast.data import DATASETS, NUM_CLASSES, SyntheticScenes
    from pixcontrast.infonce import BACKENDS as INFONCE_BACKENDS
    from pixcontrast.models import MODEL_NAMES, model_options
    from pixcontrast.models.heads import PROJ_HEADS

    for key in _keys(cfg):
        check = _CHECKS.get(key) or _default_type_check(key)
        value = _get(cfg, key)
        if check is not None and not check[0](value):
            raise _fail(key, value, check[1])

    def need(cond: bool, key: str, what: str) -> None:
        if not cond:
            raise _fail(key, _get(cfg, key), what)

    d, m, lo, o = cfg["data"], cfg["model"], cfg["loss"], cfg["optim"]
    datasets = sorted(DATASETS) + ["synthetic"]
    need(d["dataset"] in datasets, "data.dataset", "one of " + ", ".join(datasets))
    need(not 0 <= d["ignore_index"] < d["num_classes"], "data.ignore_index",
         "an int outside [0, num_classes)")
    if d["dataset"] == "synthetic":
        for split, length in (("train_split", d["num_train"]), ("val_split", d["num_val"])):
            try:       # the dataset's own checks (split name, number of classes); no data
                SyntheticScenes(d[split], length, None, d["image_size"], d["num_classes"],
                                d["data_seed"], cfg["seed"], d["ignore_index"])
            except ValueError as exc:
                bad = "data.num_classes" if "num_classes" in str(exc) else f"data.{split}"
                raise ConfigError(f"config key '{bad}': {exc}") from None
    else:
        need(d["root"] is not None, "data.root",
             f"the folder of dataset '{d['dataset']}' (--data.root PATH)")
        n = NUM_CLASSES[d["dataset"]]
        need(d["num_classes"] == n, "data.num_classes",
             f"{n}, the number of classes of dataset '{d['dataset']}'")

    need(m["name"] in MODEL_NAMES, "model.name", "one of " + ", ".join(MODEL_NAMES))
    options = m["options"] or {}
    valid = model_options(m["name"])
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"config key 'model.options' has unknown option(s) "
                          f"{', '.join(unknown)} for model '{m['name']}'; valid: "
                          f"{', '.join(valid)}")
    head = options.get("proj_head", "convmlp")
    if head is not None and head not in PROJ_HEADS:
        raise ConfigError(f"config key 'model.options.proj_head' must be one of "
                          f"{', '.join(PROJ_HEADS)} or null, got {head!r}")
    contrast_on = lo["contrast"] and lo["loss_weight"] > 0
    if contrast_on:
        need(m["proj_dim"] > 0, "model.proj_dim",
             "> 0 while loss.contrast is on (the contrast needs an embedding; or set "
             "loss.contrast false)")
        if head is None:
            raise ConfigError("config key 'model.options.proj_head' is null (no embedding) "
                              "while loss.contrast is on; remove it or set loss.contrast false")

    try:
        INFONCE_BACKENDS.validate_name(lo["backend"])
    except ValueError as exc:
        raise ConfigError(f"config key 'loss.backend': {exc}") from None
    need(not o["nesterov"] or o["momentum"] > 0, "optim.momentum",
         "> 0 with optim.nesterov true")
    _check_loss_modules(cfg)


def _check_loss_modules(cfg: Mapping[str, Any]) -> None:
    """Build the loss modules on the meta device (no memory, no data): whatever their
    constructors check is checked now, naming the loss key the error names."""
    import torch

    from pixcontrast.train.builders import build_criterion

    try:
        with torch.device("meta"):
            build_criterion(cfg)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:   # (anything else, e.g. an op the meta device
        # lacks, is left to the real construction in the trainer)
        text = str(exc)
        found = [(m.start(), k) for k in cfg["loss"]
                 for m in [re.search(rf"\b{k}\b", text)] if m]
        key = min(found)[1] if found else None          # the key the message names first
        where = f"config key 'loss.{key}'" if key else "the config's loss section"
        raise ConfigError(f"{where} is rejected by the loss module: {text}") from None
    except (RuntimeError, NotImplementedError):  # see above
        pass
