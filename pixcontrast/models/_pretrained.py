"""Loading local checkpoints into backbones (nothing is ever downloaded).

Accepted files: a ``torch.save``d state dict, or a dict holding one under ``"state_dict"``
or ``"model"``; a ``"module."`` prefix (DataParallel / DDP) is stripped. Keys that belong to
the ImageNet classifier (``ignore_prefixes``) are dropped. Everything else must match the
backbone exactly: missing keys, unexpected keys and shape mismatches raise
``CheckpointError`` listing them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

# Buffers that checkpoints saved by older PyTorch versions lack; their absence is harmless.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)
_MAX_LISTED = 20


class CheckpointError(ValueError):
    """A checkpoint file that does not fit the model (lists the offending keys)."""


def _listing(keys: Sequence[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"{len(keys)}: {shown}{more}"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a local checkpoint file, unwrapped and without a ``module.`` prefix."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained checkpoint not found: {path!r} "
                                "(pretrained= takes a local file; nothing is downloaded)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "not a checkpoint"
        raise CheckpointError(f"{path!r} is not a readable PyTorch checkpoint: {exc}") from exc
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path!r} does not hold a state dict (a mapping of parameter "
                              f"names to tensors); got {type(obj).__name__}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def load_into(module: nn.Module, path: str | os.PathLike, *,
              ignore_prefixes: Sequence[str] = (), what: str = "backbone") -> None:
    """Load the checkpoint at ``path`` into ``module`` strictly (after dropping the keys
    starting with ``ignore_prefixes``); raise ``CheckpointError`` naming every missing,
    unexpected or mis-shaped key."""
    state = read_state_dict(path)
    state = {k: v for k, v in state.items() if not k.startswith(tuple(ignore_prefixes))}
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"checkpoint {os.fspath(path)!r} does not match the {what} "
                 f"({type(module).__name__})"]
        if missing:
            parts.append(f"missing keys {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_listing(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches {_listing(mismatched)}")
        raise CheckpointError("; ".join(parts))
    module.load_state_dict(state, strict=False)
