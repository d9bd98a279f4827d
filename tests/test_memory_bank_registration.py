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


UPDATE_SCHEMA = ("pixcontrast::bank_update(Tensor(a!) features, Tensor(b!) labels, "
                 "Tensor(c!) pointers, Tensor(d!) counters, Tensor x, Tensor y, Tensor keys, "
                 "int pixels_per_update) -> Tensor")


def test_fused_update_ops():
    # The C++ op (CUDA kernels) and its Triton twin: one signature, the same mutations,
    # fake kernels of the right shape.
    check_schema("bank_update", UPDATE_SCHEMA, ["features", "labels", "pointers", "counters"])
    m = dict(device="meta")
    for name in ("bank_update", "bank_update_triton"):
        op = getattr(torch.ops.pixcontrast, name)
        ok = op(torch.empty(3, 2, 5, 4, **m), torch.empty(3, 2, 5, dtype=torch.int64, **m),
                torch.empty(3, 2, dtype=torch.int64, **m),
                torch.empty(3, dtype=torch.int32, **m), torch.empty(2, 4, 6, **m),
                torch.empty(2, 6, dtype=torch.int64, **m),
                torch.empty(2, 6, dtype=torch.int64, **m), 2)
        assert ok.shape == (1,) and ok.dtype == torch.int32
