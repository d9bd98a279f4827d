"""Backend choice for every op: one vocabulary, one chooser, reasons when a backend cannot run.

Every op (the InfoNCE loss, anchor sampling, the memory-bank write) names its backends from
one vocabulary:

=========  ===================================================================================
``torch``  plain PyTorch (for the loss: the dense reference that materialises ``N × M``)
``cpu``    the C++ CPU kernels of ``pixcontrast._C`` (the loss)
``triton`` the Triton kernels (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``)
``cuda``   the CUDA C++ kernels of ``pixcontrast._C`` (a CUDA build of the extension)
=========  ===================================================================================

An op declares its backends in an :class:`OpBackends`: for each, a capability check that
returns the reasons it cannot run given inputs (empty: it can), and per device type the
priority that ``backend="auto"`` walks, fastest first as measured
(benchmarks/results/h200-2026-11-30/). A backend named explicitly that cannot run raises
with its reasons; nothing falls back silently.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable

import torch

from pixcontrast._extension import _BUILD_HINT, extension_available, has_kernels

HAS_TRITON = importlib.util.find_spec("triton") is not None


def triton_reasons(device: torch.device) -> list[str]:
    """Why the Triton kernels cannot run on ``device`` (empty list: they can)."""
    reasons = []
    if not HAS_TRITON:
        reasons.append("triton: the triton package is not installed")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        reasons.append("triton: CPU tensors run only under TRITON_INTERPRET=1 "
                       "(the Triton interpreter, meant for testing)")
    elif device.type not in ("cpu", "cuda"):
        reasons.append(f"triton: tensors on {device} are not supported")
    return reasons


def missing_cuda_kernels(ops: tuple[str, ...]) -> list[str] | None:
    """The ops among ``pixcontrast::<op>`` for ``ops`` without a CUDA kernel, or ``None``
    when the extension is not built. Call it once, at import: the dispatcher query does not
    trace under ``torch.compile`` (fullgraph), a module constant does."""
    if not extension_available():
        return None
    return [op for op in ops if not has_kernels("CUDA", op)]


def cuda_reasons(device: torch.device, missing: list[str] | None) -> list[str]:
    """Why the CUDA kernels cannot run on ``device`` (empty list: they can); ``missing`` is
    :func:`missing_cuda_kernels`' answer for the ops needed."""
    reasons = []
    if device.type != "cuda":
        reasons.append(f"cuda: the CUDA kernels need CUDA tensors, got tensors on {device}")
    if missing is None:
        reasons.append(f"cuda: the C++ extension pixcontrast._C is not built; {_BUILD_HINT}")
    elif missing:
        reasons.append(
            "cuda: pixcontrast._C has no CUDA kernel for " + ", ".join(missing)
            + f" (built against a torch without CUDA, running {torch.__version__}, or "
            f"without nvcc, or from older sources); rebuild it with a CUDA build of torch "
            f"and nvcc present: `pip install --no-build-isolation -e .`")
    return reasons


@torch.compiler.assume_constant_result
def cuda_matmul_allows_tf32() -> bool:
    """Whether fp32 matmuls on CUDA may use TF32, as ``torch.matmul`` decides it.

    A constant for ``torch.compile`` (dynamo cannot trace the precision getter; its global
    state guard recompiles when the TF32 setting changes).

    Read through ``torch.backends.cuda.matmul.fp32_precision`` where it exists (torch ≥ 2.9):
    once a program has set the new API, reading the legacy ``allow_tf32`` flag raises
    ("mix of the legacy and new APIs"). ``"none"`` inherits ``torch.backends.fp32_precision``,
    whose own ``"none"`` means IEEE, PyTorch's default.
    """
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision is None:  # torch < 2.9
        return bool(matmul.allow_tf32)
    if precision == "none":
        precision = getattr(torch.backends, "fp32_precision", "none")
    return precision == "tf32"


VOCABULARY = ("torch", "cpu", "triton", "cuda")


@dataclasses.dataclass(frozen=True)
class OpBackends:
    """The backends of one op and how ``"auto"`` picks among them.

    ``checks``: backend name -> ``check(device, *inputs) -> list[str]`` (why it cannot run;
    empty when it can), in the order they are listed to users. ``priority``: device type ->
    the backends ``"auto"`` tries, fastest first. ``aliases``: other accepted names (kept for
    existing callers) -> a name of ``checks``. ``auto_hint`` ends the error when ``"auto"``
    finds nothing. ``rank``: an optional per-workload order that, when it has one for the
    inputs, replaces ``priority`` (only shapes, dtypes and process settings: traceable).
    """

    op: str
    checks: dict[str, Callable[..., list[str]]]
    priority: dict[str, tuple[str, ...]]
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    auto_hint: str = ""
    # Optional per-workload order: ``rank(device, *inputs) -> tuple | None`` replaces the
    # device's priority list when it returns one (the loss on CUDA: measured_order()).
    rank: Callable[..., tuple[str, ...] | None] | None = None

    def __post_init__(self):
        for name in [*self.checks, *self.aliases.values()]:
            assert name in VOCABULARY, f"{self.op}: backend {name!r} is not in {VOCABULARY}"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.checks) + tuple(self.aliases)

    def validate_name(self, backend: object) -> None:
        """A ValueError naming the valid values, for a name this op does not know."""
        if backend != "auto" and backend not in self.names:
            raise ValueError(f"backend must be 'auto' or one of {self.names}, got {backend!r}")

    def reasons(self, backend: str, device: torch.device, *inputs) -> list[str]:
        """Why ``backend`` cannot run ``inputs`` on ``device`` (empty list: it can)."""
        name = self.aliases.get(backend, backend)
        return self.checks[name](device, *inputs)

    def choose(self, backend: str, device: torch.device, *inputs) -> str:
        """The backend to run: ``backend`` itself (after its capability check) or, for
        ``"auto"``, the first of the device's priority list that can run the inputs."""
        self.validate_name(backend)
        if backend != "auto":
            name = self.aliases.get(backend, backend)
            reasons = self.checks[name](device, *inputs)
            if reasons:
                raise RuntimeError(f"{self.op}: backend={backend!r} cannot run these inputs: "
                                   + "; ".join(reasons))
            return name
        candidates = self.priority.get(device.type, ())
        if self.rank is not None:
            candidates = self.rank(device, *inputs) or candidates
        found = []
        for name in candidates:
            reasons = self.checks[name](device, *inputs)
            if not reasons:
                return name
            found += reasons
        if not candidates:
            found.append(f"no backend for device type {device.type!r}")
        raise RuntimeError(f"{self.op}: backend='auto' found no backend for these inputs: "
                           + "; ".join(found) + (f". {self.auto_hint}" if self.auto_hint else ""))


def runs_anywhere(device: torch.device, *inputs) -> list[str]:
    """The check of a plain PyTorch backend."""
    return []


# --------------------------------------------------------------------------------------
# Measured speed of the fused loss on CUDA, per workload and mode: what "auto" orders by.
# --------------------------------------------------------------------------------------

# fwd+bwd milliseconds on an H200 by benchmarks/bench_loss.py, detached bank, D = 256.
# Source: benchmarks/results/h200-2026-11-30/bench-loss.md (commit d6e774b) for "triton".
# "cuda" is None: the CUDA backend was rebuilt (chunked cuBLAS GEMMs + fused row passes,
# issue 15) after that run, whose "cuda" rows timed the WMMA kernels it replaced (11.5 ms
# bf16, 16.5 TF32, 23.1 strict fp32 at paper-bank). A GPU session re-measures and fills
# the numbers in; nothing else needs to change. A backend without a number ranks after
# every measured one, in the order of LOSS_DEFAULT_ORDER.
LOSS_FWD_BWD_MS_H200: dict[tuple[str, str], dict[str, float | None]] = {
    # (workload, mode): {backend: ms}
    ("paper-bank", "bf16"): {"triton": 5.18, "cuda": None},
    ("paper-bank", "tf32"): {"triton": 12.0, "cuda": None},
    ("paper-bank", "fp32"): {"triton": 29.4, "cuda": None},
    ("paper-mem-config", "bf16"): {"triton": 1.98, "cuda": None},
    ("paper-mem-config", "tf32"): {"triton": 3.09, "cuda": None},
    ("paper-mem-config", "fp32"): {"triton": 6.86, "cuda": None},
}
LOSS_DEFAULT_ORDER = ("triton", "cuda")


def loss_workload(n_anchors: int) -> str:
    """The measured workload nearest to ``n_anchors`` rows: ``"paper-mem-config"`` (N = 120)
    up to 256 anchors, else ``"paper-bank"`` (N = 1024)."""
    return "paper-mem-config" if n_anchors <= 256 else "paper-bank"


def loss_mode(dtype: torch.dtype, allow_tf32: bool) -> str:
    """The measured mode for a dtype: 16-bit inputs as "bf16" (fp16 was not measured; its
    products run the same way), fp32 as "tf32" or "fp32" (strict)."""
    if dtype in (torch.bfloat16, torch.float16):
        return "bf16"
    return "tf32" if allow_tf32 else "fp32"


def measured_order(workload: str, mode: str,
                   table: dict[tuple[str, str], dict[str, float | None]] | None = None,
                   default: tuple[str, ...] = LOSS_DEFAULT_ORDER) -> tuple[str, ...]:
    """Backends fastest first for (workload, mode) by ``table`` (default: the H200 table);
    unmeasured ones after the measured, in ``default`` order."""
    times = (LOSS_FWD_BWD_MS_H200 if table is None else table).get((workload, mode), {})
    measured = sorted((ms, default.index(b) if b in default else len(default), b)
                      for b, ms in times.items() if ms is not None)
    order = [b for _, _, b in measured]
    return tuple(order + [b for b in default if b not in order])
