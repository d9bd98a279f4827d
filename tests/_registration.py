"""Schema checks shared by the sampling and memory-bank registration tests."""

from __future__ import annotations

import re

import torch


def canonical(schema: str) -> str:
    """Alias names and SymInt as the C++ schemas write them (custom_op infers SymInt and
    numbered aliases)."""
    return re.sub(r"\(\w+!\)", "(!)", schema.replace("SymInt", "int"))


def check_schema(name: str, schema: str, mutated: list[str]) -> None:
    """The C++ op ``name`` has ``schema`` and writes ``mutated``; its Triton twin
    ``name_triton`` is a torch.library op of the same signature."""
    op = getattr(torch.ops.pixcontrast, name).default
    assert str(op._schema) == schema
    # In-place ops are declared mutable (alias annotations), so functionalisation and
    # torch.compile know what they write.
    assert [a.name for a in op._schema.arguments
            if a.alias_info is not None and a.alias_info.is_write] == mutated
    triton_op = getattr(torch.ops.pixcontrast, name + "_triton").default
    assert canonical(str(triton_op._schema).replace("_triton(", "(")) == canonical(schema)
