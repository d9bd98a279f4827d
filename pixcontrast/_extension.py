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


def has_kernels(dispatch_key: str) -> bool:
    """Whether the extension registered its kernels for ``dispatch_key`` ("CPU", "CUDA")."""
    return extension_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "pixcontrast::infonce_forward", dispatch_key)
