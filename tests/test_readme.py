"""Every ```python block of README.md runs as written, each in a fresh interpreter on the CPU.

A block that cannot run anywhere (it needs a file that is not in the repository) carries the
marker ``<!-- not run: <reason> -->`` on the line right before its opening fence; such
blocks are only compiled, then skipped with their reason, and their number is pinned by
NOT_RUN_EXPECTED so the set cannot grow unnoticed. Blocks of other languages (bash: commands with data and
minutes of run time) are not executed, and only ``python`` and ``bash`` fences are allowed,
so a Python snippet cannot escape this test under another tag (``py``, no tag).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
NOT_RUN_EXPECTED = 1  # the ImageNet-backbone example: it loads checkpoints from /data/weights
LANGUAGES = {"python", "bash"}
MARKER = re.compile(r"^<!--\s*not run:\s*(?P<reason>\S.*?)\s*-->$")
SNIPPET_TIMEOUT_S = 120  # each runs in a few seconds; the whole file stays under a minute


def readme_blocks(text: str) -> list[dict]:
    """Fenced blocks at the start of a line: language, first line number, code, marker."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        assert j < len(lines), f"README.md:{start + 1}: fence never closed"
        prev = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()),
                    "")
        marker = MARKER.match(prev)
        blocks.append({"lang": m.group(1), "line": start + 1,
                       "code": "\n".join(lines[start + 1:j]) + "\n",
                       "not_run": marker.group("reason") if marker else None})
        i = j + 1
    return blocks


with open(README, encoding="utf-8") as _f:
    README_TEXT = _f.read()
BLOCKS = readme_blocks(README_TEXT)
PYTHON = [b for b in BLOCKS if b["lang"] == "python"]


def test_fences_are_python_or_bash_and_markers_sit_on_python_blocks():
    assert {b["lang"] for b in BLOCKS} <= LANGUAGES, [
        (b["line"], b["lang"]) for b in BLOCKS if b["lang"] not in LANGUAGES]
    assert len(PYTHON) == README_TEXT.count("```python")
    assert len(PYTHON) >= 4  # the op, sampling/bank/losses, models, the backbone file
    # A marker anywhere else (stray, or on a bash block) means something unintended.
    markers = [ln for ln in README_TEXT.splitlines() if MARKER.match(ln.strip())]
    assert len(markers) == sum(b["not_run"] is not None for b in PYTHON), markers


def test_the_set_of_blocks_not_run_stays_small():
    skipped = [(b["line"], b["not_run"]) for b in PYTHON if b["not_run"]]
    assert len(skipped) == NOT_RUN_EXPECTED, (
        f"README python blocks marked 'not run': {skipped}; make a new one self-contained "
        "instead, or change NOT_RUN_EXPECTED on purpose")


@pytest.mark.parametrize("block", PYTHON, ids=[f"README.md:{b['line']}" for b in PYTHON])
def test_readme_python_block_runs(block, tmp_path):
    if block["not_run"]:
        compile(block["code"], f"README.md:{block['line']}", "exec")  # valid Python at least
        pytest.skip(f"README.md:{block['line']} marked not run: {block['not_run']}")
    script = tmp_path / f"readme_{block['line']}.py"
    script.write_text(block["code"], encoding="utf-8")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # on the CPU, as a reader without GPU
    env.pop("TRITON_INTERPRET", None)  # set by conftest for the kernel tests; not a user's
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=SNIPPET_TIMEOUT_S)
    took = time.perf_counter() - t0
    assert proc.returncode == 0, (
        f"README.md:{block['line']} failed ({took:.1f} s):\n{proc.stderr[-3000:]}")
