"""The Triton InfoNCE kernels as an H100/H200 compiles them, checked on the CPU.

benchmarks/aot_kernels.py runs the real launchers on fake CUDA tensors, captures every
launch (arguments, constants, compiler options) and compiles it for sm_90 with Triton's own
specialisation. Here, for a bf16 paper-like case, an fp32 case with TF32 off (3xTF32) and
the unnormalised large-norm case of the GPU tests:

* no launch allows FMA contraction, and no loss kernel's PTX has a contracted
  ``fma.rn.f32``: every kernel rounds ``s = dot·scale`` the same way, so the column backward
  recomputes the forward's logits bit for bit (without it the contrast gradient was off by
  113 % on an H200, diagnosis §4.2);
* fp32 with TF32 off runs ``tf32x3`` on the tensor cores (never CUDA-core "ieee" dots,
  which spilled and ran 15× slower than dense PyTorch there);
* every launch fits the 227 KB of shared memory of an sm_90 CTA;
* at paper size in bf16 (N = 1024, M = 190 000, D = 256) the negatives pass has the shape
  its speed prediction rests on (docs/notes/infonce-triton.md): 128-row blocks with each
  warpgroup on its own 64 rows (16 m64n64k16 wgmma for S, 4 m64n256k16 for U: nothing
  computed twice), no spills, one wave of programs, and wgmmas that ptxas did not
  serialise; the positives run on two programs per SM;
* at paper size in TF32 the negatives keep the 128-row blocks (32-column tiles: A 128 KB
  plus the column tile and its transposed copy, 64 KB), without spills or serialised
  wgmmas, and the positives run 16-column tiles at two programs per SM.

The same compile with contraction allowed must show FMAs, and the general path (online
max, data-dependent rescale) must show serialised wgmmas, so both detectors are live.
Needs a process without TRITON_INTERPRET (the kernels must be JIT functions, not
interpreted ones): the check runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import dataclasses, json, sys
sys.path.insert(0, sys.argv[1] + "/benchmarks")
import aot_kernels as A

cases = [
    A.Case("bf16-bank+anchors", dtype="bf16", d=256, n=333, m=4099),
    A.Case("fp32-strict-300", dtype="fp32", d=300, n=70, m=300, mode="bank-grad"),
    A.Case("large-norm-fp32", dtype="fp32", d=40, n=65, m=301, mode="bank-grad",
           normalize=False),
    A.Case("tf32-self", dtype="tf32", d=48, n=100, m=0, mode="self"),
    A.Case("paper-bf16", mode="bank"),
    A.Case("paper-tf32", dtype="tf32", mode="bank"),
]
rows = A.report(cases)
general = A.report([A.Case("paper-bf16-general", mode="bank", normalize=False)])
# Control: the same launch compiled with contraction allowed must show FMAs.
launch = next(l for l in A.capture_launches(cases[2])
              if l.kernel.__name__ == "_columns_backward_kernel")
control = A.compile_launch(launch, enable_fp_fusion=True)
print(json.dumps({"rows": rows, "control": control, "general": general}))
"""

LOSS_KERNELS = ("_negatives_kernel", "_positives_kernel", "_columns_backward_kernel")


@pytest.fixture(scope="module")
def compiled():
    pytest.importorskip("triton")
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", SCRIPT, ROOT], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_launch_is_compiled_without_fp_contraction(compiled):
    rows = compiled["rows"]
    kernels = {r["kernel"] for r in rows}
    assert set(LOSS_KERNELS) | {"_finalize_kernel"} <= kernels
    for r in rows:
        where = f"{r['case']}: {r['kernel']}"
        assert r["options"]["enable_fp_fusion"] is False, where
        assert r["compiled_fp_fusion"] is False, where
        assert r["fma"] == 0, f"{where}: {r['fma']} contracted fma.rn.f32 in the PTX"


def test_contraction_detector_sees_fmas_when_allowed(compiled):
    assert compiled["control"]["fma"] > 0


def test_fp32_modes_use_the_tensor_cores(compiled):
    for r in compiled["rows"]:
        if r["kernel"] not in LOSS_KERNELS:
            continue
        where = f"{r['case']}: {r['kernel']}"
        assert r["mma"], f"{where}: no tensor-core instruction"
        if r["dtype"] == "fp32":
            assert r["input_precision"] == "tf32x3", where
            # three TF32 products of a hi/lo split: operands are rounded to TF32 (cvt.rna)
            assert r["tf32_cvt"] > 0, where
        elif r["dtype"] == "tf32":
            assert r["input_precision"] == "tf32", where
        assert all(".f16" in k or ".bf16" in k or ".tf32" in k or k.startswith("mma.")
                   for k in r["mma"]), f"{where}: {r['mma']}"


def test_every_launch_fits_the_shared_memory_of_an_sm90_cta(compiled):
    for r in compiled["rows"]:
        assert r["smem_ok"], f"{r['case']}: {r['kernel']} needs {r['smem']} B of smem"


def _paper(rows, kernel, case="paper-bf16"):
    return next(r for r in rows if r["case"].startswith(case) and r["kernel"] == kernel)


def test_paper_bf16_negatives_shape(compiled):
    neg = _paper(compiled["rows"], "_negatives_kernel")
    assert neg["tile"] == [128, 64, 256] and neg["options"]["num_warps"] == 8
    assert neg["mma"] == {"wgmma.m64n64k16.bf16": 16, "wgmma.m64n256k16.bf16": 4}
    assert neg.get("stack") == 0
    assert neg["loop_mma_waits"] <= 2, neg["loop_mma_waits"]  # not serialised (C7515)
    programs = neg["grid"][0] * neg["grid"][1]
    assert 0.9 * 132 <= programs <= 132  # one wave at one CTA per SM
    pos = _paper(compiled["rows"], "_positives_kernel")
    assert pos["grid"] == [2 * 132] and pos["loop_mma_waits"] <= 2


def test_paper_tf32_shape(compiled):
    neg = _paper(compiled["rows"], "_negatives_kernel", "paper-tf32")
    assert neg["tile"] == [128, 32, 256] and neg["options"]["num_warps"] == 8
    assert neg["mma"] == {"wgmma.m64n32k8.tf32": 32, "wgmma.m64n256k8.tf32": 4}
    assert neg.get("stack") == 0
    assert neg["loop_mma_waits"] <= 2, neg["loop_mma_waits"]
    assert 0.9 * 132 <= neg["grid"][0] * neg["grid"][1] <= 132
    pos = _paper(compiled["rows"], "_positives_kernel", "paper-tf32")
    assert pos["tile"] == [64, 16, 256] and pos["grid"] == [2 * 132]
    assert 2 * (pos["smem"] + 1024) <= 233_472  # two CTAs in an SM's 228 KB (1 KB each reserved)
    assert pos["loop_mma_waits"] <= 2


def test_serialisation_detector_is_live(compiled):
    neg = _paper(compiled["general"], "_negatives_kernel", "paper-bf16-general")
    assert neg["loop_mma_waits"] >= 16
