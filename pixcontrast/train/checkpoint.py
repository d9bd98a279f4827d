"""Trainer checkpoints: atomic save, verified load, RNG states and checksums.

A checkpoint is a dict holding at least :data:`CHECKPOINT_KEYS`: the model, optimizer,
scheduler, grad scaler and loss state (the memory bank), every rank's RNG states (torch,
CUDA, numpy, random), the iteration, the resolved config and the best validation mIoU;
the trainer adds ``world_size`` and per-rank SHA-256 checksums of the bank and the model
(``bank_checksums``, ``model_checksums``), equal on every rank under DDP.

Integrity: :func:`save_checkpoint` adds ``checksums``, the SHA-256 of every entry (each
tensor of the model, the loss state with the bank, the optimizer state and the RNG states
by its own name; the non-tensor rest of each top-level entry as one); :func:`load_checkpoint`
recomputes them and refuses a damaged file with a ``CheckpointError`` (a ``ValueError``)
naming the file and each damaged entry (``model/backbone.conv1.weight``,
``criterion/contrast.memory.features``, ...). The functions live in
:mod:`pixcontrast.models._pretrained`, so that ``pixcontrast.models.read_state_dict``
verifies a trainer checkpoint too without importing the trainer. A checkpoint from before
the per-entry checksums: its ``model_checksums`` / ``bank_checksums`` are checked when it
has them, and it loads with a warning; one without any checksum loads with a warning.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from pixcontrast.models._pretrained import (CHECKSUMS_KEY, CheckpointError, checkpoint_checksums,
                                            legacy_digest, load_file, verify_checksums)

__all__ = ["CHECKPOINT_KEYS", "CheckpointError", "save_checkpoint", "load_checkpoint",
           "verify_checkpoint", "rng_state", "set_rng_state", "digest", "checkpoint_checksums"]

CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "criterion", "rng",
                   "iteration", "config", "best_miou")


def rng_state() -> dict:
    """This process's RNG states: torch (CPU), CUDA (all devices, if any), numpy, random."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "random": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def digest(tensors: Iterable[torch.Tensor]) -> str:
    """SHA-256 of the tensors' bytes, in order (``model_checksums``, ``bank_checksums``)."""
    return legacy_digest(tensors)


def save_checkpoint(state: Mapping[str, Any], path: str) -> None:
    """Write ``state`` and its ``checksums`` to ``path`` atomically (``path.tmp``, flushed to
    disk, then a rename): an interrupted save never leaves a truncated checkpoint behind."""
    state = {k: v for k, v in state.items() if k != CHECKSUMS_KEY}
    state[CHECKSUMS_KEY] = checkpoint_checksums(state)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def verify_checkpoint(ckpt: Any, path: str) -> dict:
    """``ckpt`` if it is an intact trainer checkpoint (a dict with a model and a config whose
    checksums match), else ``CheckpointError`` naming ``path`` (and the damaged entries)."""
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path} is not a pixcontrast trainer checkpoint (expected a "
                              f"dict with keys {', '.join(CHECKPOINT_KEYS)})")
    verify_checksums(ckpt, path)
    return ckpt


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Read and verify a trainer checkpoint (``torch.load(weights_only=True)``, the numpy RNG
    state allowed); a missing file raises ``FileNotFoundError``, an unreadable, foreign or
    damaged one ``CheckpointError``, each naming the path."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = load_file(path, map_location)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path
        msg = str(exc)
        if "WeightsUnpickler error:" in msg:    # the reason, not torch's advice around it
            msg = msg.split("WeightsUnpickler error:", 1)[1]
        why = next((x.strip() for x in msg.splitlines() if x.strip()), type(exc).__name__)
        raise CheckpointError(f"cannot read checkpoint {path} (damaged or not a checkpoint): "
                              f"{why}") from None
    return verify_checkpoint(ckpt, path)
