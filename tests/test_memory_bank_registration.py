"""The memory-bank write op's registration: the C++ schema (CUDA kernel) and the Triton op,
their fake kernels and mutations, checked on the CPU."""

from __future__ import annotations

import torch

import pixcontrast.memory_bank  # noqa: F401  (registers the fake kernel and the Triton op)

from tests._registration import check_schema

SCHEMA = ("pixcontrast::bank_write(Tensor(a!) features, Tensor(b!) labels, Tensor values, "
          "Tensor rows, Tensor keep, Tensor entry_labels) -> ()")



def test_schema():
    check_schema("bank_write", SCHEMA, ["features", "labels"])


def test_fake_kernels():
    i64 = torch.empty(6, dtype=torch.int64, device="meta")
    b = torch.empty(6, dtype=torch.bool, device="meta")
    f = torch.empty(6, 4, dtype=torch.bfloat16, device="meta")
    for name in ("bank_write", "bank_write_triton"):
        write = getattr(torch.ops.pixcontrast, name)
        assert write(f, i64, f[:2], i64[:2], b[:2], i64[:2]) is None


def test_triton_write_opcheck():
    args = (torch.randn(6, 4), torch.full((6,), -1), torch.randn(3, 4), torch.tensor([0, 4, 2]),
            torch.tensor([True, False, True]), torch.tensor([1, 2, 3]))
    torch.library.opcheck(torch.ops.pixcontrast.bank_write_triton.default, args)
