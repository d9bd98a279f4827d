"""Shared test setup.

* Without a CUDA device the Triton kernels run under the Triton interpreter
  (TRITON_INTERPRET=1, set before triton is imported anywhere).
* Every test gets fresh random inputs: a random seed per test, printed with any failure
  (re-run with PIXCONTRAST_TEST_SEED=<seed> to reproduce).
* Tests marked ``gpu`` skip cleanly without CUDA; nothing touches CUDA at import time.
* A GPU fault is charged to the test that caused it: every ``gpu`` test synchronises the
  device at teardown, so an asynchronous error (a kernel's illegal or misaligned access)
  surfaces there and not in a later test. Such an error is sticky: the process's CUDA
  context is dead. Under pytest-xdist the worker then exits at once, and xdist reports the
  test as crashing its worker and starts a fresh one (run with ``--max-worker-restart``);
  without xdist the session stops with a message naming the test.
"""

from __future__ import annotations

import os
import random
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_seed(request):
    seed = int(os.environ.get("PIXCONTRAST_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield seed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        seeds = [v for k, v in item.user_properties if k == "seed"]
        if seeds:
            report.sections.append(("seed", f"PIXCONTRAST_TEST_SEED={seeds[0]}"))


def _syncs_the_gpu(item) -> bool:
    return "gpu" in item.keywords and torch.cuda.is_available()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    if _syncs_the_gpu(item):
        # An asynchronous fault of this test's kernels fails this test, not a later one.
        torch.cuda.synchronize()
    return result


@pytest.fixture(autouse=True)
def gpu_fault_isolation(request):
    yield
    if not _syncs_the_gpu(request.node):
        return
    try:
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001  (torch.AcceleratorError, or RuntimeError)
        message = (f"CUDA fault during {request.node.nodeid}: {type(exc).__name__}: {exc}"
                   .splitlines()[0])
        if hasattr(request.config, "workerinput"):  # an xdist worker
            # The context is unusable: end this worker so xdist replaces it, instead of
            # failing every later test on the worker.
            print(message, file=sys.stderr, flush=True)
            os._exit(3)
        pytest.exit(message, returncode=3)
