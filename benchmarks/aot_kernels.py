"""Compile the Triton InfoNCE kernels ahead of time for sm_90, without a GPU, and read them.

    python benchmarks/aot_kernels.py                      # the default grid of cases
    python benchmarks/aot_kernels.py --case bf16-256 --case fp32-300 --json aot.json

The launchers of kernels/infonce.py run as they would on an H100/H200, on *fake* CUDA
tensors (torch's FakeTensorMode: shapes, dtypes and strides, no data), with a stand-in
Triton driver that reports an sm_90 target. Every launch they make is captured with its
exact arguments and compiler options, and compiled with ``kernel.warmup`` (Triton's own
argument specialisation, no launch). For each launch the report gives:

* ``regs``, ``stack`` (spills), ``smem``: registers per thread, local-memory stack bytes,
  shared memory bytes (from the cubin, read with the cuobjdump that ships with Triton);
  a launch whose ``smem`` exceeds 227 KB fails on the GPU with OutOfResources;
* ``mma``: the tensor-core instruction shapes in the PTX (``wgmma`` m64nNk16 on Hopper,
  ``mma.sync`` otherwise) with their counts;
* ``fma``: contracted ``fma.rn.f32`` instructions. The tensor-core modes (bf16, fp16,
  TF32, 3xTF32) have no FMA of their own, so any is LLVM contracting the elementwise math,
  which breaks the "identical logits in every kernel" invariant (kernels/infonce.py,
  ``_launch_options``); tests/test_infonce_aot.py asserts there is none;
* ``vec_ld``, ``vec_st``: vector global loads and stores (``.v2``/``.v4``), which need
  aligned addresses;
* ``loop_instr``, ``loop_skip``, ``loop_mma_waits`` (``analyse_sass``): the SASS of the
  main loop, one tile per iteration: its instructions per warp (×3.5 ns ≈ a tile's time at
  one CTA per SM on an H200), how many a data-dependent branch can skip, and its wgmma
  waits (one per wgmma when ptxas serialised them). docs/notes/infonce-triton.md turns
  these into predicted times.

Run it in a process without ``TRITON_INTERPRET=1`` (the kernels must be real JIT
functions); the Triton wheel's own ptxas assembles the cubin.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SM90_SMEM_LIMIT = 232_448  # bytes of shared memory one CTA may use on sm_90 (227 KB)
SM_COUNT = 132  # H100 SXM / H200
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
          "tf32": torch.float32}


@dataclasses.dataclass(frozen=True)
class Case:
    """One call of the loss on the GPU: forward, and backward when a gradient is wanted."""
    name: str
    dtype: str = "bf16"     # bf16 | fp16 | fp32 (TF32 off: 3xTF32) | tf32 (fp32, TF32 on)
    d: int = 256
    n: int = 1024
    m: int = 190_000
    mode: str = "bank+anchors-grad"  # self | bank | bank+anchors | bank-grad | bank+anchors-grad
    normalize: bool = True
    need_grad: bool = True
    supcon: bool = False    # loss="supcon" on the same kernels (their SUPCON constexpr)


def default_cases() -> list[Case]:
    cases = [Case(f"{dt}-{d}", dtype=dt, d=d, n=333, m=4099)
             for dt in ("bf16", "fp16", "fp32", "tf32") for d in (48, 256, 300, 512)]
    cases += [Case("paper-bf16", mode="bank"), Case("paper-fp32", dtype="fp32", mode="bank"),
              Case("paper-tf32", dtype="tf32", mode="bank"),
              Case("n120-bf16", n=120, mode="bank"), Case("m1e6-bf16", m=1_000_000, mode="bank"),
              Case("self1024-bf16", m=0, mode="self"),
              Case("large-norm-fp32", dtype="fp32", d=40, n=65, m=301, mode="bank-grad",
                   normalize=False),
              Case("paper-bf16-supcon", mode="bank", supcon=True),
              Case("paper-bf16-supcon-grad", supcon=True),
              Case("general-fp32-supcon", dtype="fp32", d=40, n=65, m=301, mode="bank-grad",
                   normalize=False, supcon=True)]
    return cases


class _FakeDriver:
    """The part of a Triton driver that compiling (``warmup``) asks for: an sm_90 target."""

    def __init__(self):
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget("cuda", 90, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def __getattr__(self, name):
        raise RuntimeError(f"aot_kernels: the fake sm_90 driver has no {name!r} (nothing "
                           "may launch or query a device here)")


class _MockArg:
    """A tensor argument as Triton's specialisation sees it: dtype and pointer alignment
    (base allocations are 512-byte aligned, so the offset of a view decides)."""

    def __init__(self, t: torch.Tensor):
        self.dtype = t.dtype
        self._ptr = t.storage_offset() * t.element_size()

    def data_ptr(self) -> int:
        return self._ptr


@dataclasses.dataclass
class Launch:
    kernel: object  # triton JITFunction
    grid: tuple
    args: tuple
    kwargs: dict


def capture_launches(case: Case) -> list[Launch]:
    """Run the launchers of kernels/infonce.py on fake CUDA tensors; return their launches."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pixcontrast.kernels import infonce as K

    launches: list[Launch] = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def record(*args, **kwargs):
                launches.append(Launch(self.kernel, tuple(grid), args, kwargs))
            return record

    kernels = {name: obj for name, obj in vars(K).items()
               if name.endswith("_kernel") and hasattr(obj, "warmup")}
    if not kernels:
        raise RuntimeError("no Triton JIT kernels in kernels/infonce.py: is TRITON_INTERPRET "
                           "set? Run this in a process without it.")
    dtype = DTYPES[case.dtype]
    self_contrast = case.mode.startswith("self") or "anchors" in case.mode
    with contextlib.ExitStack() as stack:
        for name, kernel in kernels.items():
            stack.enter_context(mock.patch.object(K, name, Recorder(kernel)))
        stack.enter_context(mock.patch.object(K, "_sm_count", lambda index: SM_COUNT))
        stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        dev = torch.device("cuda", 0)
        a = torch.empty(case.n, case.d, dtype=dtype, device=dev)
        y = torch.empty(case.n, dtype=torch.long, device=dev)
        if case.mode == "self":
            c, z = a.new_empty((0, case.d)), y.new_empty((0,))
        else:
            c = torch.empty(case.m, case.d, dtype=dtype, device=dev)
            z = torch.empty(case.m, dtype=torch.long, device=dev)
        tf32 = case.dtype == "tf32"
        args = (a, y, c, z, self_contrast, 10.0, -1, case.normalize)
        _, lse, pos_sig, _, _ = K.infonce_forward(*args, case.need_grad, allow_tf32=tf32,
                                                  check_finite=True,  # the public op's default
                                                  supcon=case.supcon)
        if case.need_grad and (self_contrast or case.mode.endswith("grad")):
            K.infonce_backward_columns(*args, lse, pos_sig, torch.empty_like(lse),
                                       allow_tf32=tf32, supcon=case.supcon)
    return launches


def _cuobjdump() -> str | None:
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")
    return path if os.path.exists(path) else shutil.which("cuobjdump")


def _resource_usage(cubin: bytes) -> dict:
    tool = _cuobjdump()
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                             text=True).stdout
    usage = {}
    for key, field in (("REG", "regs"), ("STACK", "stack"), ("LOCAL", "local")):
        hit = re.search(rf"\b{key}:(\d+)", out)
        if hit:
            usage[field] = int(hit.group(1))
    return usage


def _sass(cubin: bytes) -> str:
    tool = _cuobjdump()
    if tool is None:
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, "-sass", f.name], capture_output=True, text=True).stdout


def analyse_sass(sass: str) -> dict:
    """The main loop: the innermost loop (a backward ``BRA``) that issues tensor-core
    instructions. ``loop_instr``: its SASS instructions per warp per iteration (one tile);
    ``loop_skip``: the longest stretch of it a forward branch can jump over (a
    data-dependent ``if``); ``loop_mma_waits``: its ``WARPGROUP.DEPBAR`` waits, one per
    wgmma when ptxas serialised them (its advisory C7515), which costs the overlap of the
    tensor cores with everything else."""
    code = [(int(addr, 16), text.strip()) for addr, text in
            re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = []
    for addr, text in code:
        hit = re.search(r"\bBRA (?:`\()?0x([0-9a-f]+)", text)
        if hit and int(hit.group(1), 16) <= addr:
            body = [(a, t) for a, t in code if int(hit.group(1), 16) <= a <= addr]
            if any(re.search(r"\b(HGMMA|HMMA)\b", t) for _, t in body):
                loops.append(body)
    if not loops:
        return {}
    body = min(loops, key=len)
    start, end = body[0][0], body[-1][0]
    skip = 0
    for addr, text in body:
        hit = re.search(r"\bBRA (?:`\()?0x([0-9a-f]+)", text)
        if hit and addr < int(hit.group(1), 16) <= end:
            skip = max(skip, sum(1 for a, _ in body if addr < a < int(hit.group(1), 16)))
    waits = sum(1 for _, t in body if t.startswith("WARPGROUP.DEPBAR"))
    return {"loop_instr": len(body), "loop_skip": skip, "loop_mma_waits": waits,
            "loop_at": f"{start:#x}-{end:#x}"}


def analyse_ptx(ptx: str) -> dict:
    mma: dict[str, int] = {}
    for hit in re.finditer(r"\b(wgmma\.mma_async|mma\.sync)\.\S*?(m\d+n\d+k\d+)(\.\S+)?", ptx):
        kind = "wgmma" if hit.group(1).startswith("wgmma") else "mma"
        types = (hit.group(3) or "").split(".")
        key = f"{kind}.{hit.group(2)}" + (f".{types[-1]}" if types[-1] else "")
        mma[key] = mma.get(key, 0) + 1
    return {"fma": len(re.findall(r"\bfma\.rn\.f32\b", ptx)),
            "vec_ld": len(re.findall(r"\bld\.global(\.\w+)*\.v[248]\.", ptx)),
            "vec_st": len(re.findall(r"\bst\.global(\.\w+)*\.v[248]\.", ptx)),
            "tf32_cvt": len(re.findall(r"\bcvt\.rna\.tf32\.f32\b", ptx)),
            "mma": mma}


def compile_launch(launch: Launch, **option_overrides) -> dict:
    """Compile one captured launch for sm_90 (Triton's own specialisation) and read it."""
    import triton

    args = [_MockArg(x) if isinstance(x, torch.Tensor) else x for x in launch.args]
    kwargs = {**launch.kwargs, **option_overrides}
    previous = triton.runtime.driver._active
    triton.runtime.driver.set_active(_FakeDriver())
    try:
        kernel = launch.kernel.warmup(*args, grid=launch.grid, **kwargs)
    finally:
        triton.runtime.driver._active = previous
    consts = {k: v for k, v in kwargs.items() if k.isupper()}
    info = {"kernel": launch.kernel.__name__, "grid": list(launch.grid),
            "options": {k: kwargs.get(k) for k in ("num_warps", "num_stages",
                                                    "enable_fp_fusion")},
            "compiled_fp_fusion": getattr(kernel.metadata, "enable_fp_fusion", None),
            "tile": [consts.get("BLOCK_N"), consts.get("BLOCK_M"), consts.get("BLOCK_D")],
            "input_precision": consts.get("INPUT_PRECISION"),
            "smem": kernel.metadata.shared, **_resource_usage(kernel.asm["cubin"]),
            **analyse_ptx(kernel.asm["ptx"]), **analyse_sass(_sass(kernel.asm["cubin"]))}
    info["smem_ok"] = info["smem"] <= SM90_SMEM_LIMIT
    return info


def report(cases: list[Case]) -> list[dict]:
    rows = []
    for case in cases:
        seen = set()
        for launch in capture_launches(case):
            key = (launch.kernel.__name__, repr(sorted(launch.kwargs.items())))
            if key in seen:  # the same kernel and constants for another segment
                continue
            seen.add(key)
            rows.append({"case": case.name, **dataclasses.asdict(case),
                         **compile_launch(launch)})
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| case | kernel | grid | tile N×M×D | warps/stages | precision | regs | stack "
            "| smem KB | mma | loop instr / skippable / waits | fma | vec ld |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        mma = ", ".join(f"{k}×{v}" for k, v in sorted(r["mma"].items())) or "—"
        loop = (f"{r['loop_instr']} / {r['loop_skip']} / {r['loop_mma_waits']}"
                if "loop_instr" in r else "—")
        tile = "×".join("·" if t is None else str(t) for t in r["tile"])
        lines.append(
            f"| {r['case']} | {r['kernel'].strip('_')} | {'×'.join(map(str, r['grid']))} | "
            f"{tile} | {r['options']['num_warps']}/{r['options']['num_stages']} | "
            f"{r['input_precision'] or '—'} | {r.get('regs', '?')} | {r.get('stack', '?')} | "
            f"{r['smem'] / 1024:.1f}{'' if r['smem_ok'] else ' (> 227!)'} | {mma} | {loop} | "
            f"{r['fma']} | {r['vec_ld']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = [c.name for c in default_cases()]
    p.add_argument("--case", action="append", choices=names, help="repeatable; default all")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        p.error("run without TRITON_INTERPRET=1: the kernels must be compiled, not interpreted")
    cases = [c for c in default_cases() if not args.case or c.name in args.case]
    rows = report(cases)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    bad = [r for r in rows if not r["smem_ok"]]
    if bad:
        print(f"{len(bad)} launch(es) need more than 227 KB of shared memory", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
