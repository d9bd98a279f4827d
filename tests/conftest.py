"""Shared test setup.

* Without a CUDA device the Triton kernels run under the Triton interpreter
  (TRITON_INTERPRET=1, set before triton is imported anywhere).
* Every test gets fresh random inputs: a random seed per test, printed with any failure
  (re-run with PIXCONTRAST_TEST_SEED=<seed> to reproduce).
* Tests marked ``gpu`` skip cleanly without CUDA; nothing touches CUDA at import time.
"""

from __future__ import annotations

import os
import random

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
