"""benchmarks/gpu_session.sh without a GPU: the script parses, its tools import, the plan.

On a GPU machine the same script builds, runs the GPU tests, the benchmarks and the
profile; here ``--dry-run`` checks everything that does not need a device.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_session.sh")


def test_script_parses():
    assert subprocess.run(["bash", "-n", SCRIPT]).returncode == 0


@pytest.mark.parametrize("flags", [[], ["--quick", "--triage"]])
def test_dry_run_imports_the_tools_and_plans_every_step(tmp_path, flags):
    if shutil.which("timeout") is None:
        pytest.skip("needs coreutils' timeout")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OUT"] = str(tmp_path)
    out = subprocess.run(["bash", SCRIPT, "--dry-run", *flags], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = (tmp_path / "summary.md").read_text()
    assert "the session's tools import and parse their options" in summary
    steps = ["build", "gpu-tests", "bench-loss"]
    steps += ["triage"] if flags else ["bench-sampling", "bench-memory-bank", "profile",
                                       "bench-mining"]
    for step in steps:
        assert f"- plan: {step} " in summary, summary
    assert ("tests/test_infonce_gpu.py" in summary) == bool(flags)
    assert (tmp_path / "session.tgz").exists()


def test_unknown_option_is_refused(tmp_path):
    out = subprocess.run(["bash", SCRIPT, "--fast"], capture_output=True, text=True,
                         env=dict(os.environ, OUT=str(tmp_path)))
    assert out.returncode == 2 and "unknown option --fast" in out.stderr
