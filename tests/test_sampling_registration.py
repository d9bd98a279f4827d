"""The sampling ops' registration: the C++ schemas (CUDA kernels) and the fused Triton ops,
their fake kernels and mutations, checked on the CPU."""

from __future__ import annotations

import os
import re

import pytest
import torch

import pixcontrast.sampling  # noqa: F401  (registers the fake kernels and the Triton ops)

SCHEMAS = {
    "sample_histogram":
        "pixcontrast::sample_histogram(Tensor labels, Tensor predictions, Tensor keys, "
        "Tensor(a!) counter, int max_samples, int max_views, int ignore_index) -> "
        "(Tensor, Tensor, Tensor, Tensor)",
    "sample_select":
        "pixcontrast::sample_select(Tensor sorted_keys, Tensor perm, Tensor ws, "
        "Tensor(a!) out_idx, Tensor(b!) out_lab, int max_views) -> ()",
}
MUTATED = {"sample_histogram": ["counter"], "sample_select": ["out_idx", "out_lab"]}


def _canonical(schema: str) -> str:
    return re.sub(r"\(\w+!\)", "(!)", schema.replace("SymInt", "int"))


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schemas(name):
    # The C++ ops (CUDA kernels) and their Triton twins: one signature, the same mutations.
    op = getattr(torch.ops.pixcontrast, name).default
    assert str(op._schema) == SCHEMAS[name]
    triton_op = getattr(torch.ops.pixcontrast, name + "_triton").default
    assert _canonical(str(triton_op._schema).replace("_triton(", "(")) == _canonical(
        SCHEMAS[name])
    for o in (op, triton_op):
        assert [a.name for a in o._schema.arguments
                if a.alias_info is not None and a.alias_info.is_write] == MUTATED[name]


@pytest.mark.parametrize("suffix", ["", "_triton"])
def test_fake_kernels(suffix):
    lab = torch.empty(3, 40, dtype=torch.int64, device="meta")
    keys = torch.empty(3 * 40 + 12, dtype=torch.int64, device="meta")
    counter = torch.empty(1, dtype=torch.int32, device="meta")
    hist = getattr(torch.ops.pixcontrast, "sample_histogram" + suffix)
    sort_keys, ws, out_idx, out_lab = hist(lab, lab, keys, counter, 7, 9, -1)
    assert sort_keys.shape == (3, 40) and ws.shape == (7, 3 * 4)
    assert out_idx.shape == out_lab.shape == (7,)
    assert all(t.dtype == torch.int64 for t in (sort_keys, ws, out_idx, out_lab))
    select = getattr(torch.ops.pixcontrast, "sample_select" + suffix)
    assert select(sort_keys, sort_keys, ws, out_idx, out_lab, 9) is None


def test_triton_ops_opcheck():
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    labels = torch.randint(0, 4, (2, 30))
    preds = torch.where(torch.rand(2, 30) < 0.5, labels, 9)
    keys = torch.randint(0, 2**40, (2 * 30 + 20,))
    args = (labels, preds, keys, torch.zeros(1, dtype=torch.int32), 5, 2, -1)
    # Schema and fake kernel only: the outputs hold unwritten rows by design (the select
    # op fills out_idx/out_lab; ws past each image's pairs is never read), so the
    # run-twice comparisons of the other checks do not apply.
    torch.library.opcheck(torch.ops.pixcontrast.sample_histogram_triton.default, args,
                          test_utils=("test_schema", "test_faketensor"))
