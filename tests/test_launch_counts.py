"""Kernel launches per call of the fused GPU paths of sample_anchors and MemoryBank.update
(issue 17): at most 8 for the two together, counted on the CPU (Triton under the
interpreter runs the same Python code path as on a GPU).

What counts as one launch (docs/notes/sampling-bank.md, "Launch count"):

* every aten op seen by a ``TorchDispatchMode`` (the ops a call dispatches, after the
  Python-level decompositions) except the ones that launch no kernel on a GPU: views and
  other aliases (``view``, ``reshape`` of a contiguous tensor, ``detach``, ``expand``,
  ``slice``...: ops whose schema returns an alias), and allocations (``empty*``,
  ``new_empty*``). An aten op counts once even when its CUDA implementation launches
  several kernels (``sort``: a segmented radix sort, a few kernels); ``randint``,
  ``zeros``, ``_assert_async``... count once each;
* every Triton kernel launch (``kernel[grid](...)``), counted at the launcher; the
  pixcontrast custom ops that wrap them are not counted themselves.

The count is static (it depends on shapes and arguments, never on values), so small
inputs measure the paper's workload; the sizes here still make ``max_samples < P`` (the
pair keys are drawn) and put several classes in each image.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pixcontrast.memory_bank import MemoryBank
from pixcontrast.sampling import sample_anchors

LIMIT = 8  # issue 17: sample_anchors and update together
_ALLOCATIONS = {"empty", "empty_strided", "new_empty", "new_empty_strided", "empty_like"}


def _launches_no_kernel(func) -> bool:
    schema = func._schema
    if func.__name__.split(".")[0] in _ALLOCATIONS:
        return True
    returns = schema.returns
    # A view or alias: the output shares the input's storage and nothing is written.
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write
                                 for r in returns)


class LaunchCounter(TorchDispatchMode):
    """Counts the aten ops that launch a kernel; ``ops`` lists them by name."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if not name.startswith("pixcontrast.") and not _launches_no_kernel(func):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def triton_launches(monkeypatch):
    """Every launch of a Triton kernel of pixcontrast.kernels, by kernel name."""
    from pixcontrast.kernels import memory_bank, sampling

    launched: list[str] = []

    class Counting:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            launch = self.kernel[grid]

            def run(*args, **kwargs):
                launched.append(self.name)
                return launch(*args, **kwargs)
            return run

    for module in (sampling, memory_bank):
        for name, obj in list(vars(module).items()):
            if name.endswith("_kernel") and hasattr(obj, "__getitem__"):
                monkeypatch.setattr(module, name, Counting(name, obj))
    return launched


def _device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    return "cpu"


def _inputs(dev: str):
    b, h, w, k, d = 2, 12, 16, 6, 8
    labels = torch.randint(0, k, (b, h, w))
    labels = torch.where(torch.rand(b, h, w) < 0.1, -1, labels)
    preds = torch.where(torch.rand(b, h, w) < 0.6, labels, torch.randint(0, k, (b, h, w)))
    emb = torch.randn(b, d, h, w)
    bank = MemoryBank(k, d, size=20, pixels_per_update=3).to(dev)
    return labels.to(dev), preds.to(dev), emb.to(dev), bank


def _count(fn, triton_launches) -> tuple[list[str], list[str]]:
    start = len(triton_launches)
    with LaunchCounter() as counter:
        fn()
    return counter.ops, triton_launches[start:]


def test_fused_paths_launch_at_most_8(triton_launches):
    dev = _device()
    labels, preds, emb, bank = _inputs(dev)
    kw = dict(max_samples=4, max_views=10, backend="triton")  # 4 < P = 384 // 11: pair keys

    def sample():
        sample_anchors(labels, preds, **kw)

    def update():
        bank.update(emb, labels, backend="triton")

    sample(), update()  # warm-up: the bank's completion counters are allocated once
    s_ops, s_triton = _count(sample, triton_launches)
    u_ops, u_triton = _count(update, triton_launches)
    total = len(s_ops) + len(s_triton) + len(u_ops) + len(u_triton)
    detail = f"sample_anchors: {s_ops} + {s_triton}; update: {u_ops} + {u_triton}"
    assert total <= LIMIT, detail
    # What the count is made of (docs/notes/sampling-bank.md): one random draw, one sort
    # and two kernels for sampling; one draw, two kernels and the finite assert for the
    # update.
    assert s_triton == ["_histogram_kernel", "_select_kernel"], detail
    assert u_triton == ["_update_kernel", "_write_kernel"], detail
    assert sorted(s_ops) == ["aten.randint.low_generator", "aten.sort.stable"], detail
    assert sorted(u_ops) == ["aten._assert_async.msg", "aten.randint.low_generator"], detail


def test_counter_sees_every_kind_of_launch(triton_launches):
    # The counter itself: views and allocations are free, every other aten op counts, and
    # the unfused torch path (the oracle's twin) is far above the limit.
    dev = _device()
    x = torch.randn(4, 6, device=dev)
    with LaunchCounter() as counter:
        y = x.view(24).reshape(4, 6).t().detach()
        torch.empty(3, device=dev)
        z = (y * 2).sum()
    assert counter.ops == ["aten.mul.Tensor", "aten.sum.default"], counter.ops
    del z
    labels, preds, emb, bank = _inputs(dev)
    ops, launched = _count(lambda: sample_anchors(labels, preds, max_samples=4, max_views=10,
                                                  backend="torch"), triton_launches)
    assert not launched and len(ops) > 50
