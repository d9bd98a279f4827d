"""tests/conftest.py charges a GPU fault to the test that caused it (CPU check, no GPU).

A pytest run in a subprocess, with tests/conftest.py loaded and CUDA faked: the first
``gpu`` test leaves an asynchronous "misaligned address" behind (``torch.cuda.synchronize``
raises from then on in that process, as a sticky CUDA error does), the second is clean.
Under xdist the faulting test fails with the CUDA error and is reported as crashing its
worker, and the next test runs in a fresh worker and passes; without xdist the session stops and names the faulting test.
On the H200 of 2026-11-29 one such fault failed 52 later tests on two workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFTEST = textwrap.dedent("""
    import torch
    from tests.conftest import *  # noqa: F401,F403  (the fixtures under test)

    torch.cuda.is_available = lambda: True
    _fault = []

    def _synchronize(device=None):
        if _fault:
            raise RuntimeError("CUDA error: misaligned address")

    torch.cuda.synchronize = _synchronize
    """)

TESTS = textwrap.dedent("""
    import pytest
    from conftest import _fault

    @pytest.mark.gpu
    def test_a_leaves_a_fault():
        _fault.append(1)  # the test body itself sees nothing wrong

    @pytest.mark.gpu
    def test_b_is_clean():
        assert not _fault
    """)


def run_pytest(tmp_path, *args):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_fault.py").write_text(TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs CUDA\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           str(tmp_path), *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)


def test_without_xdist_the_session_stops_and_names_the_test(tmp_path):
    out = run_pytest(tmp_path, "-p", "no:xdist")
    text = out.stdout + out.stderr
    assert out.returncode == 3, text
    assert "CUDA fault during test_fault.py::test_a_leaves_a_fault" in text, text
    assert "misaligned address" in text
    assert "test_b_is_clean" not in text.split("CUDA fault during")[0].split("collected")[-1]


def test_under_xdist_the_worker_is_replaced_and_later_tests_pass(tmp_path):
    pytest.importorskip("xdist")
    out = run_pytest(tmp_path, "-n", "1", "--max-worker-restart", "2", "-rA")
    text = out.stdout + out.stderr
    assert "crashed while running 'test_fault.py::test_a_leaves_a_fault'" in text, text
    assert "FAILED test_fault.py::test_a_leaves_a_fault" in text, text
    assert "PASSED test_fault.py::test_a_leaves_a_fault" not in text, text
    assert "misaligned address" in text, text
    assert "PASSED test_fault.py::test_b_is_clean" in text, text
