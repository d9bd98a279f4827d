"""What the trainer builds from a resolved config: device, model, loss, optimizer, LR
schedule and data loaders. Each builder reads only the config (plus the process's rank and
world size where the data is sharded); :class:`pixcontrast.train.loop.Trainer` calls them
in a fixed order (the model first, right after seeding, so every rank starts from the same
weights).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pixcontrast.data import build_dataset
from pixcontrast.losses import ContrastCELoss, PixelContrastLoss
from pixcontrast.train.config import ConfigError, loss_arguments
from pixcontrast.train.distributed import ResumableSampler, ShardSampler

__all__ = ["resolve_device", "build_model_from_config", "build_criterion",
           "split_head_parameters", "build_optimizer", "poly_lr_lambda", "build_scheduler",
           "Loaders", "build_loaders"]

_HEAD_WORDS = ("head", "cls", "aux", "classifier", "last_layer", "ocr")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("config key 'train.device' is 'cuda' but no CUDA device is "
                              "available (use 'cpu' or 'auto')")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def build_model_from_config(cfg: Mapping[str, Any], pretrained: bool = True) -> nn.Module:
    """The model of ``cfg["model"]``; ``pretrained=False`` leaves ``model.pretrained``
    unread (the caller loads a trainer checkpoint over every weight anyway)."""
    from pixcontrast.models import build_model

    m = cfg["model"]
    return build_model(m["name"], cfg["data"]["num_classes"], proj_dim=m["proj_dim"],
                       pretrained=m["pretrained"] if pretrained else None,
                       **(m["options"] or {}))


def build_criterion(cfg: Mapping[str, Any]) -> ContrastCELoss:
    """``ContrastCELoss`` around a ``PixelContrastLoss``: every ``loss.*`` key is passed to
    the constructor that takes it (see :func:`pixcontrast.train.config.loss_arguments`);
    classes, ignore index and embedding size come from ``data`` and ``model``. With
    ``loss.contrast`` false (or ``loss_weight`` 0) the contrast term and its bank are off."""
    lo, d = cfg["loss"], cfg["data"]
    on = bool(lo["contrast"]) and lo["loss_weight"] > 0
    if on and cfg["model"]["proj_dim"] <= 0:
        raise ConfigError("config key 'model.proj_dim' is 0 (no embedding) but loss.contrast "
                          "is on; set model.proj_dim > 0 or loss.contrast false")
    kwargs = loss_arguments(lo)
    contrast_kw, ce_kw = kwargs[PixelContrastLoss], kwargs[ContrastCELoss]
    if not on:
        contrast_kw["memory_size"] = 0
        ce_kw["loss_weight"] = 0.0
    contrast = PixelContrastLoss(**contrast_kw, ignore_index=d["ignore_index"],
                                 num_classes=d["num_classes"],
                                 dim=cfg["model"]["proj_dim"] or None)
    return ContrastCELoss(d["num_classes"], **ce_kw, ignore_index=d["ignore_index"],
                          contrast=contrast)


def split_head_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(backbone, heads)`` parameter lists for the head LR multiplier.

    With a ``model.backbone`` submodule: heads = everything outside it (decoder, classifier,
    auxiliary and projection heads). Without one: heads = ``proj_head`` and every parameter
    under a module whose name contains head/cls/aux/classifier/last_layer/ocr.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if isinstance(getattr(model, "backbone", None), nn.Module):
        is_head = [not n.startswith("backbone.") for n, _ in named]
    else:
        is_head = [any(w in part for part in n.split(".")[:-1] for w in _HEAD_WORDS)
                   for n, _ in named]
    backbone = [p for (_, p), h in zip(named, is_head) if not h]
    heads = [p for (_, p), h in zip(named, is_head) if h]
    return backbone, heads


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.SGD:
    """SGD over two groups: the backbone at ``optim.lr``, the heads at ``lr × head_lr_mult``
    (an empty group is left out)."""
    o = cfg["optim"]
    backbone, heads = split_head_parameters(model)
    groups = [{"params": backbone, "lr": o["lr"]},
              {"params": heads, "lr": o["lr"] * o["head_lr_mult"]}]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=o["lr"],
                           momentum=o["momentum"], weight_decay=o["weight_decay"],
                           nesterov=o["nesterov"])


def poly_lr_lambda(total: int, power: float = 0.9, warmup_iters: int = 0,
                   warmup_ratio: float = 0.1):
    """LR factor at step ``it``: ``(1 − it/total)^power``, times a linear ramp from
    ``warmup_ratio`` to 1 over the first ``warmup_iters`` steps."""
    def factor(it: int) -> float:
        poly = max(0.0, 1.0 - it / total) ** power
        if warmup_iters > 0 and it < warmup_iters:
            poly *= warmup_ratio + (1.0 - warmup_ratio) * it / warmup_iters
        return poly
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any]
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """Poly LR over ``train.iterations`` steps with the optional linear warm-up."""
    o = cfg["optim"]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, poly_lr_lambda(cfg["train"]["iterations"], o["poly_power"],
                                  o["warmup_iters"], o["warmup_ratio"]))


class Loaders(NamedTuple):
    train_set: Dataset
    val_set: Dataset
    sampler: ResumableSampler
    train_loader: DataLoader
    val_loader: DataLoader
    iters_per_epoch: int


def build_loaders(cfg: Mapping[str, Any], rank: int, world: int, pin_memory: bool
                  ) -> Loaders:
    """Per-rank training batches (seeded permutation per epoch, per-sample augmentation
    RNG, resumable mid-epoch) and this rank's shard of the validation set."""
    d, seed = cfg["data"], cfg["seed"]
    train_set = build_dataset(d, d["train_split"], train=True, seed=seed)
    val_set = build_dataset(d, d["val_split"], train=False, seed=seed)
    sampler = ResumableSampler(train_set, world, rank, seed)
    iters_per_epoch = len(sampler) // d["batch_size"]
    if iters_per_epoch == 0:
        raise ConfigError(f"config key 'data.batch_size' is {d['batch_size']}, more than the "
                          f"{len(sampler)} training samples of each of {world} process(es)")
    train_loader = DataLoader(
        train_set, batch_size=d["batch_size"], sampler=sampler,
        num_workers=d["num_workers"], drop_last=True, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed))
    val_loader = DataLoader(
        val_set, batch_size=d["val_batch_size"],
        sampler=ShardSampler(len(val_set), rank, world),
        num_workers=d["num_workers"], generator=torch.Generator().manual_seed(seed))
    return Loaders(train_set, val_set, sampler, train_loader, val_loader, iters_per_epoch)
