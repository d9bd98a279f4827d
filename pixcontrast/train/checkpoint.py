"""Trainer checkpoints: atomic save, verified load, RNG states and checksums.

A checkpoint is a dict holding at least :data:`CHECKPOINT_KEYS`: the model, optimizer,
scheduler, grad scaler and loss state (the memory bank), every rank's RNG states (torch,
CUDA, numpy, random), the iteration, the resolved config and the best validation mIoU;
the trainer adds ``world_size`` and per-rank SHA-256 checksums of the bank and the model
(``bank_checksums``, ``model_checksums``), equal on every rank under DDP.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["CHECKPOINT_KEYS", "save_checkpoint", "load_checkpoint", "verify_checkpoint",
           "rng_state", "set_rng_state", "digest"]

CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "criterion", "rng",
                   "iteration", "config", "best_miou")


def rng_state() -> dict:
    """This process's RNG states: torch (CPU), CUDA (all devices, if any), numpy, random."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "random": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def digest(tensors: Iterable[torch.Tensor]) -> str:
    """SHA-256 of the tensors' bytes, in order."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(state: Mapping[str, Any], path: str) -> None:
    """Write ``state`` to ``path`` atomically (``path.tmp``, then a rename): an interrupted
    save never leaves a truncated checkpoint behind."""
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def verify_checkpoint(ckpt: Any, path: str) -> dict:
    """``ckpt`` if it is a trainer checkpoint (a dict with a model and a config), else
    ``ValueError`` naming ``path``."""
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path} is not a pixcontrast trainer checkpoint (expected a dict "
                         f"with keys {', '.join(CHECKPOINT_KEYS)})")
    return ckpt


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Read a trainer checkpoint; a missing or foreign file raises naming the path."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from None
    return verify_checkpoint(ckpt, path)
