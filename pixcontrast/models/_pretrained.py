"""Loading local checkpoints into backbones (nothing is ever downloaded), and the
integrity check of the trainer's checkpoints.

Accepted files: a ``torch.save``d state dict, or a dict holding one under ``"state_dict"``
or ``"model"``; a ``"module."`` prefix (DataParallel / DDP) is stripped. Keys that belong to
the ImageNet classifier (``ignore_prefixes``) are dropped. Everything else must match the
backbone exactly: missing keys, unexpected keys and shape mismatches raise
``CheckpointError`` listing them.

Checksums. A trainer checkpoint (``pixcontrast.train``) holds ``"checksums"``: the SHA-256
of every entry, written with it (:func:`checkpoint_checksums`): one per tensor, named by its
place (``model/<state-dict key>``, ``criterion/contrast.memory.features`` (the memory bank),
``optimizer/state/<i>/momentum_buffer``, ``rng/<rank>/torch``, ...), and one per top-level
entry for everything in it that is not a tensor (``iteration``, ``config``, ``scheduler``,
the numpy RNG state, the key layout, ...). :func:`verify_checksums` recomputes them on load
and raises ``CheckpointError`` naming the file and every damaged entry; every reader of a
trainer checkpoint runs it (resume, evaluation, and :func:`read_state_dict` here, which
takes the ``"model"`` of a trainer checkpoint). Checkpoints written before the per-entry
checksums: those with the older whole-model / bank checksums (``model_checksums``,
``bank_checksums``) have those verified (the damaged key cannot be named) and load with a
warning that the rest is unverified; those without any checksum load with a warning.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

# Buffers that checkpoints saved by older PyTorch versions lack; their absence is harmless.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)
_MAX_LISTED = 20


class CheckpointError(ValueError):
    """A checkpoint file that does not fit the model (lists the offending keys), cannot be
    read, or is damaged (names the entries whose checksums differ)."""


# The globals a trainer checkpoint needs besides tensors and plain Python values: the numpy
# RNG state (a uint32 array: _reconstruct, ndarray, dtype and numpy 2's dtype class). ``torch.load(weights_only=True)`` accepts them once listed;
# numpy arrays of object dtype would need more and stay refused. Both module paths of
# ``_reconstruct`` (numpy ≥ 2 writes ``numpy._core``, numpy 1 wrote ``numpy.core``).
_NP_CORE = getattr(np, "_core", None) or np.core
_NUMPY_GLOBALS = [(_NP_CORE.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
                  (_NP_CORE.multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
                  np.ndarray, np.dtype, *(getattr(np.dtypes, n) for n in (
                      "UInt32DType", "UInt8DType", "Int64DType", "Float64DType")
                      if hasattr(getattr(np, "dtypes", None), n))]
# Leaves of a checkpoint that are encoded by their repr (exact for these types).
_SCALARS = (str, bytes, int, float, complex, bool, type(None), np.generic, torch.dtype,
            torch.device)

CHECKSUMS_KEY = "checksums"
# Keys of a trainer checkpoint's older integrity record: one SHA-256 per rank of the whole
# model state dict and of the memory bank (see ``legacy_digest``).
_LEGACY_KEYS = ("model_checksums", "bank_checksums")
_BANK_PREFIX = "contrast.memory."
_BANK_BUFFERS = ("features", "labels", "pointers")


def load_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, with the numpy RNG state of a trainer
    checkpoint allowed (no other pickled object is)."""
    with torch.serialization.safe_globals(_NUMPY_GLOBALS):
        return torch.load(path, map_location=map_location, weights_only=True)


def _tensor_bytes(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)


def legacy_digest(tensors: Iterable[torch.Tensor]) -> str:
    """SHA-256 of the tensors' bytes, in order (no dtype or shape): the trainer's per-rank
    ``model_checksums`` / ``bank_checksums``."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(_tensor_bytes(t))
    return h.hexdigest()


def _encode(obj: Any, path: str, tensors: dict[str, str], out: list[bytes]) -> None:
    """Append a canonical encoding of ``obj``'s non-tensor content to ``out``; record each
    tensor's SHA-256 in ``tensors`` under its path (``out`` gets a placeholder)."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = tensor_sha256(obj)
        piece = b"T"
    elif isinstance(obj, np.ndarray) and obj.dtype != object:
        piece = f"A{obj.dtype.str}{obj.shape}".encode() + np.ascontiguousarray(obj).tobytes()
    elif isinstance(obj, Mapping):
        out.append(b"D%d" % len(obj))
        for key, value in obj.items():
            _encode(key, f"{path}/<key>", tensors, out)
            _encode(value, f"{path}/{key}", tensors, out)
        return
    elif isinstance(obj, (list, tuple)):
        out.append(b"%s%d" % (b"L" if isinstance(obj, list) else b"U", len(obj)))
        for i, value in enumerate(obj):
            _encode(value, f"{path}/{i}", tensors, out)
        return
    elif isinstance(obj, _SCALARS):     # an exact repr
        piece = f"{type(obj).__name__}:{obj!r}".encode()
    else:
        raise TypeError(f"cannot checksum {path}: a {type(obj).__name__} (a checkpoint holds "
                        f"tensors, numpy arrays and plain Python values only)")
    out.append(b"%d:" % len(piece) + piece)


def checkpoint_checksums(ckpt: Mapping[str, Any]) -> dict[str, str]:
    """``{entry: SHA-256}`` of a checkpoint dict (its ``"checksums"`` left out): one entry
    per tensor (``model/backbone.conv1.weight``, ``criterion/contrast.memory.features``,
    ``optimizer/state/0/momentum_buffer``, ...) and one per top-level key for the rest of
    its content (values and layout; tensors stand in as placeholders)."""
    out: dict[str, str] = {}
    for key, value in ckpt.items():
        if key == CHECKSUMS_KEY:
            continue
        tensors: dict[str, str] = {}
        pieces: list[bytes] = []
        _encode(value, str(key), tensors, pieces)
        if not isinstance(value, torch.Tensor):
            h = hashlib.sha256()
            for piece in pieces:
                h.update(piece)
            out[str(key)] = h.hexdigest()
        out.update(tensors)
    return out


def describe_entry(entry: str) -> str:
    """A checksum entry in words: ``model/backbone.conv1.weight`` → ``model state-dict key
    'backbone.conv1.weight'``; the bank's buffers say so."""
    section, _, rest = entry.partition("/")
    if section == "model" and rest:
        return f"model state-dict key {rest!r}"
    if section == "criterion" and rest.startswith(_BANK_PREFIX):
        return f"the memory bank (criterion state-dict key {rest!r})"
    if section == "criterion" and rest:
        return f"loss state-dict key {rest!r}"
    if section == "optimizer" and rest.startswith("state/"):
        return f"optimizer state {rest[len('state/'):]!r}"
    if not rest:
        return f"'{section}' (its non-tensor content)"
    return f"{section} entry {rest!r}"


def _is_trainer_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and (CHECKSUMS_KEY in obj or any(
        k in obj for k in _LEGACY_KEYS) or {"model", "config", "iteration"} <= set(obj))


def verify_checksums(ckpt: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Recompute a trainer checkpoint's checksums; ``CheckpointError`` naming ``path`` and
    every damaged entry when one differs. A checkpoint that predates the per-entry
    checksums loads with a warning (module doc)."""
    path = os.fspath(path)
    if CHECKSUMS_KEY not in ckpt:
        _verify_legacy(ckpt, path)
        return
    expected = ckpt[CHECKSUMS_KEY]
    if not isinstance(expected, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in expected.items()):
        raise CheckpointError(f"checkpoint {path} is damaged: its '{CHECKSUMS_KEY}' entry is "
                              f"not a mapping of entry names to SHA-256 strings")
    actual = checkpoint_checksums(ckpt)
    damaged = [k for k in expected if actual.get(k) != expected[k]]
    damaged += [k for k in actual if k not in expected]
    if damaged:
        shown = "; ".join(describe_entry(k) if k in actual else f"{k} (missing)"
                          for k in damaged[:_MAX_LISTED])
        more = f"; ... ({len(damaged) - _MAX_LISTED} more)" if len(damaged) > _MAX_LISTED else ""
        raise CheckpointError(
            f"checkpoint {path} is damaged: {len(damaged)} of its {len(expected)} entries "
            f"{'differs' if len(damaged) == 1 else 'differ'} from the SHA-256 recorded when "
            f"it was written: {shown}{more}. Refusing to load it; use a copy or an earlier "
            f"checkpoint")


def _verify_legacy(ckpt: Mapping[str, Any], path: str) -> None:
    model_sums, bank_sums = (ckpt.get(k) for k in _LEGACY_KEYS)
    if not model_sums and not bank_sums:
        warnings.warn(f"checkpoint {path} has no checksums (written before pixcontrast "
                      f"recorded them): loading it unverified. A run resumed from it writes "
                      f"checkpoints with checksums", UserWarning, stacklevel=3)
        return
    model = ckpt.get("model")
    if model_sums and isinstance(model, Mapping):
        if legacy_digest(model.values()) != model_sums[0]:
            raise CheckpointError(
                f"checkpoint {path} is damaged: the model weights differ from the SHA-256 "
                f"recorded when it was written (model_checksums; this checkpoint predates "
                f"per-entry checksums, so the damaged key cannot be named). Refusing to load "
                f"it; use a copy or an earlier checkpoint")
    crit = ckpt.get("criterion")
    if bank_sums and bank_sums[0] and isinstance(crit, Mapping):
        bank = [crit.get(_BANK_PREFIX + b) for b in _BANK_BUFFERS]
        if any(t is None for t in bank) or legacy_digest(bank) != bank_sums[0]:
            raise CheckpointError(
                f"checkpoint {path} is damaged: the memory bank (criterion "
                f"'{_BANK_PREFIX}*') differs from the SHA-256 recorded when it was written "
                f"(bank_checksums). Refusing to load it; use a copy or an earlier checkpoint")
    warnings.warn(f"checkpoint {path} predates per-entry checksums: its model weights and "
                  f"memory bank were verified, the rest (optimizer, RNG, iteration, config) "
                  f"is unverified", UserWarning, stacklevel=3)


def _listing(keys: Sequence[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"{len(keys)}: {shown}{more}"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a local checkpoint file, unwrapped and without a ``module.`` prefix.

    A trainer checkpoint (its ``"model"``) is verified first: a damaged one raises
    ``CheckpointError`` naming the entry (module doc)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained checkpoint not found: {path!r} "
                                "(pretrained= takes a local file; nothing is downloaded)")
    try:
        obj = load_file(path)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "not a checkpoint"
        raise CheckpointError(f"{path!r} is not a readable PyTorch checkpoint: {exc}") from exc
    if _is_trainer_checkpoint(obj):
        verify_checksums(obj, path)
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
    problems = state_dict_mismatch(module, state)
    if problems:
        raise CheckpointError("; ".join([f"checkpoint {os.fspath(path)!r} does not match the "
                                         f"{what} ({type(module).__name__})", *problems]))
    module.load_state_dict(state, strict=False)


def state_dict_mismatch(module: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """How ``state`` does not fit ``module``: ``["missing keys N: ...", "unexpected keys
    N: ...", "shape mismatches N: ..."]`` (at most 20 keys each; empty list: it fits)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
                  for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"missing keys {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_listing(unexpected)}")
    if mismatched:
        parts.append(f"shape mismatches {_listing(mismatched)}")
    return parts
