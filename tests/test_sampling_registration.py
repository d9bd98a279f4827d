"""The sampling ops' registration: the C++ schemas (CUDA kernels) and the Triton ops, their
fake kernels and mutations, checked on the CPU."""

from __future__ import annotations

import pytest
import torch

import pixcontrast.sampling  # noqa: F401  (registers the fake kernels and the Triton ops)

from tests._registration import check_schema

SCHEMAS = {
    "sampling_run_histogram":
        "pixcontrast::sampling_run_histogram(Tensor run_key, Tensor rank, Tensor cls, "
        "Tensor easy, Tensor valid, int hw) -> Tensor",
    "sampling_select_scatter":
        "pixcontrast::sampling_select_scatter(Tensor cls, Tensor easy, Tensor rank, "
        "Tensor lab, Tensor pix, Tensor pair_of_cls, Tensor kept, Tensor pair_hard, "
        "Tensor pair_easy, Tensor offset, Tensor views, Tensor(a!) out_idx, "
        "Tensor(b!) out_lab, int ignore_index) -> ()",
}
MUTATED = {"sampling_run_histogram": [], "sampling_select_scatter": ["out_idx", "out_lab"]}



@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schemas(name):
    check_schema(name, SCHEMAS[name], MUTATED[name])


def test_fake_kernels():
    n = 11
    i64 = torch.empty(n, dtype=torch.int64, device="meta")
    b = torch.empty(n, dtype=torch.bool, device="meta")
    for suffix in ("", "_triton"):
        hist = getattr(torch.ops.pixcontrast, "sampling_run_histogram" + suffix)
        counts = hist(i64, i64, i64, b, b, 11)
        assert counts.shape == (n, 2) and counts.dtype == torch.int64
        out = torch.empty(5, dtype=torch.int64, device="meta")
        select = getattr(torch.ops.pixcontrast, "sampling_select_scatter" + suffix)
        assert select(i64, b, i64, i64, i64, i64, b[:3], i64[:3], i64[:3], i64[:3], i64[:1],
                      out, out.clone(), -1) is None


def test_triton_histogram_opcheck():
    n, hw = 12, 6
    args = (torch.arange(n) // 3, torch.arange(n) % 3, torch.arange(n) // 2,
            torch.rand(n) < 0.5, torch.rand(n) < 0.8, hw)
    torch.library.opcheck(torch.ops.pixcontrast.sampling_run_histogram_triton.default, args)
