"""Loads ``pixcontrast._C`` once, with an error that says what to do when it cannot."""

from __future__ import annotations

import functools

import torch

_BUILD_HINT = "build it with `pip install --no-build-isolation -e .` from the repository root"


@functools.cache
def load_extension():
    """Import the compiled extension (registers ``torch.ops.pixcontrast.*``) or raise."""
    try:
        from pixcontrast import _C  # noqa: F401
    except ImportError as exc:
        msg = str(exc)
        if "undefined symbol" in msg or "version" in msg.lower():
            raise ImportError(
                f"pixcontrast._C was built against a different torch than the running "
                f"{torch.__version__} ({msg}); rebuild: {_BUILD_HINT}") from exc
        raise ImportError(f"pixcontrast._C is not built ({msg}); {_BUILD_HINT}") from exc
    return _C


def extension_available() -> bool:
    try:
        load_extension()
    except ImportError:
        return False
    return True


def has_kernels(dispatch_key: str, op: str = "infonce_forward") -> bool:
    """Whether the extension registered a kernel of ``pixcontrast::<op>`` for
    ``dispatch_key`` ("CPU", "CUDA"). False when the op is not even declared (an extension
    built from older sources)."""
    if not extension_available():
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"pixcontrast::{op}",
                                                              dispatch_key)
    except RuntimeError:  # "operator pixcontrast::<op> does not exist"
        return False
