"""benchmarks/bench_loss.py --quick: structure of its outputs (not timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import _harness as H  # noqa: E402
import bench_loss  # noqa: E402

KEYS = {"workload", "provider", "mode", "dtype", "device", "fwd_ms", "fwd_bwd_ms",
        "peak_mem_mb", "status", "tflops", "gemm_mode", "gemm_tflops", "roofline_fraction",
        "speedup_vs_unfused", "torch", "triton", "commit", "N", "M", "D"}


def test_quick_run_writes_json_table_and_plot(tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    env = {**os.environ}
    env.pop("TRITON_INTERPRET", None)  # the benchmark measures real backends only
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_loss.py"), "--quick",
         "--device", "cpu", "--repeats", "1", "--json", str(out_json), "--plot", str(out_png)],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads(out_json.read_text())
    assert {(r["workload"], r["provider"], r["dtype"]) for r in records} >= {
        ("paper-bank", "unfused", "float32"), ("paper-bank", "pixcontrast-cpu", "float32"),
        ("paper-bank", "pixcontrast-cpu", "bfloat16"), ("paper-mem-config", "unfused", "float32"),
        ("paper-bank", "unfused-compiled", "float32")}
    for r in records:
        assert KEYS <= r.keys(), KEYS - r.keys()
        assert r["status"] in {"ok", "oom", "timeout", "unsupported", "error"}
        # Precision modes: cpu runs float32 (strict) and bfloat16; tf32 is CUDA only.
        assert r["mode"] in {"float32", "bfloat16"} and r["dtype"] == H.MODES[r["mode"]][0]
        # The GEMM rate a row is compared against follows the one table; on the CPU the
        # bf16 kernels run fp32 GEMMs, so bf16 rows use the float32 rate.
        assert r["gemm_mode"] == bench_loss.GEMM_FOR_MODE[("cpu", r["mode"])] == "float32"
        assert r["gemm_tflops"] > 0
        if r["provider"].startswith("unfused"):
            assert r["mode"] == "float32"  # casts to float32 itself: no bfloat16 rows
        if r["status"] == "ok":
            assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["tflops"] > 0
            assert r["speedup_vs_unfused"] > 0 and r["speedup_baseline_mode"] == "float32"
            assert r["roofline_fraction"] == pytest.approx(r["tflops"] / r["gemm_tflops"])
    fused = next(r for r in records if r["provider"] == "pixcontrast-cpu"
                 and r["workload"] == "paper-bank" and r["dtype"] == "float32")
    assert fused["status"] == "ok" and fused["peak_mem_mb"] is not None
    # the markdown table is on stdout, one row per record
    assert proc.stdout.count("\n| paper-") == len(records)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The header (machine, versions, GEMM rates, bandwidth) is on stdout before the table;
    # stderr has only progress and notes.
    header = proc.stdout[:proc.stdout.index("| workload |")]
    assert f"torch {torch.__version__}" in header and records[0]["device_name"] in header
    assert "GEMM rate (S = A·Cᵀ then P·C" in header and "copy bandwidth" in header
    assert "ATen CPU capability" in header and "load average at start" in header
    assert "GEMM rate" not in proc.stderr and header.splitlines()[0] not in proc.stderr
    assert "| mode |" in proc.stdout


def _state():
    m = torch.backends.cuda.matmul
    return m.allow_tf32, getattr(m, "fp32_precision", None)


@pytest.mark.parametrize("enabled", [True, False])
def test_tf32_context_sets_both_records_and_restores(enabled):
    before = _state()
    with H.tf32_matmul(enabled):
        # Both the legacy flag (read by the CUDA extension through allowTF32CuBLAS) and the
        # new fp32_precision (read by the Triton path) agree; reading either must not raise.
        allow, prec = _state()
        assert allow is enabled
        if prec is not None:
            assert prec == ("tf32" if enabled else "ieee")
        with H.precision("float32" if enabled else "tf32"):  # nests
            assert _state()[0] is (not enabled)
        assert _state() == (allow, prec)
    assert _state() == before


def test_tf32_alone_on_cpu_is_refused():
    env = {**os.environ}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_loss.py"), "--device", "cpu",
         "--dtype", "tf32"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "skipped on cpu" in proc.stderr


def _case(provider, mode, device="cuda", ms=10.0):
    return {"workload": "w", "provider": provider, "mode": mode,
            "dtype": H.MODES[mode][0], "device": device, "N": 4, "M": 8, "D": 2,
            "self_contrast": False, "shape": [4, 8, 2, 1], "fwd_bwd_ms": ms}


def test_derive_uses_the_gemm_and_baseline_of_each_mode():
    cases = [_case("unfused", "float32", ms=40.0), _case("unfused", "tf32", ms=20.0),
             _case("pixcontrast-cuda", "float32"), _case("pixcontrast-cuda", "tf32"),
             _case("pixcontrast-cuda", "bfloat16"), _case("pixcontrast-cpu", "bfloat16", "cpu")]
    # 4·N·M·D = 256 FLOPs in 10 ms: 2.56e-8 TFLOP/s, so most of these rates are beaten.
    gemm = {("float32", 4, 2): 1e-8, ("tf32", 4, 2): 2e-8, ("bfloat16", 4, 2): 4e-8,
            ("tf32x3", 4, 2): 0.5e-8}
    bench_loss.derive(cases, gemm, bandwidth=100.0)
    got = {(c["provider"], c["mode"]): c for c in cases}
    assert got["pixcontrast-cuda", "float32"]["speedup_vs_unfused"] == 4.0
    assert got["pixcontrast-cuda", "tf32"]["speedup_vs_unfused"] == 2.0  # vs unfused tf32
    bf16 = got["pixcontrast-cuda", "bfloat16"]
    assert bf16["speedup_vs_unfused"] == 4.0 and bf16["speedup_baseline_mode"] == "float32"
    # the fused strict-fp32 rows run 3xTF32 (three TF32 passes), the unfused ones SGEMM
    assert [got["pixcontrast-cuda", m]["gemm_tflops"] for m in ("float32", "tf32", "bfloat16")
            ] == [0.5e-8, 2e-8, 4e-8]
    assert got["pixcontrast-cuda", "float32"]["gemm_mode"] == "tf32x3"
    assert got["unfused", "float32"]["gemm_mode"] == "float32"
    assert got["pixcontrast-cpu", "bfloat16"]["gemm_mode"] == "float32"
    for c in cases:
        assert c["roofline_fraction"] == pytest.approx(c["tflops"] / c["gemm_tflops"])
    above = [c for c in cases if c["roofline_fraction"] > 1.05]
    assert 0 < len(above) < len(cases)  # the unfused rows (0.64×) are below
    flagged = bench_loss.roofline_warnings(cases)
    assert len(flagged) == len(above) and all("NOT representative" in w for w in flagged)


def _record(workload, provider, mode, n, m, status="ok", ms=10.0, mb=20.0, self_contrast=False):
    return {"workload": workload, "provider": provider, "mode": mode, "N": n, "M": m,
            "D": 256, "self_contrast": self_contrast, "status": status,
            "fwd_bwd_ms": ms if status == "ok" else None,
            "peak_mem_mb": mb if status == "ok" else None, "device_name": "test CPU"}


def _png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_of_the_default_workloads_is_bars_labelled_with_each_n(tmp_path):
    # paper-bank and paper-mem-config: two N, one M. Nothing to draw against M: one group
    # per workload with its own N, one bar per provider and mode (no vertical segments).
    records = [_record(wl, p, mode, n, 190_000, ms=ms)
               for wl, n in (("paper-bank", 1024), ("paper-mem-config", 120))
               for p, mode, ms in (("unfused", "float32", 900.0),
                                   ("pixcontrast-cpu", "float32", 100.0),
                                   ("pixcontrast-cpu", "bfloat16", 110.0))]
    records[0].update(status="oom", fwd_bwd_ms=None, peak_mem_mb=None)
    got = bench_loss.plot(records, str(tmp_path / "p.png"))
    assert _png(tmp_path / "p.png") and got["kind"] == "bars"
    assert list(got["groups"]) == ["paper-bank", "paper-mem-config"]
    assert "N = 1024, M = 190,000" in got["group_labels"]["paper-bank"]
    assert "N = 120, M = 190,000" in got["group_labels"]["paper-mem-config"]
    # one bar per (workload, provider, mode) that ran; the oom row is a label, not a bar
    bars = got["points"]["fwd_bwd_ms"]
    assert len(bars["unfused (float32)"]) == 1 and len(bars["pixcontrast-cpu (bfloat16)"]) == 2
    assert sorted(y for _, y in bars["pixcontrast-cpu (float32)"]) == [100.0, 100.0]


def test_plot_with_a_sweep_is_against_m_for_the_sweep_n_only(tmp_path, capsys):
    records = [_record("sweep", p, "float32", 1024, m, ms=m / 100)
               for m in (10_000, 30_000, 100_000) for p in ("unfused", "pixcontrast-cpu")]
    records += [_record("paper-mem-config", "pixcontrast-cpu", "float32", 120, 190_000),
                _record("batch", "pixcontrast-cpu", "float32", 1024, 1024, self_contrast=True)]
    got = bench_loss.plot(records, str(tmp_path / "s.png"))
    assert _png(tmp_path / "s.png") and got["kind"] == "lines"
    assert "N = 1024" in got["xlabel"] and "120" not in got["xlabel"]
    assert got["left_out"] == ["batch", "paper-mem-config"]
    for series in got["points"]["fwd_bwd_ms"].values():
        xs = [x for x, _ in series]
        assert xs == sorted(set(xs)) == [10_000, 30_000, 100_000]  # one point per M


def test_plot_of_self_contrast_alone_is_labelled_as_such(tmp_path):
    got = bench_loss.plot([_record("batch", "pixcontrast-cpu", "float32", 512, 512,
                                   self_contrast=True)], str(tmp_path / "b.png"))
    assert got["kind"] == "bars" and "self-contrast N = 512" in got["group_labels"]["batch"]


def test_variant_rows_run_the_mining_and_supcon_losses():
    """--variant adds pixcontrast-<backend>/<variant> rows for the mining family's backends
    that run here, and each row's step computes that loss."""
    import argparse

    from pixcontrast.ops import fused_pixel_contrast

    args = argparse.Namespace(workload=["paper-bank"], device="cpu", provider=None,
                              dtype=["float32"], variant=["hardest", "semi-hard", "supcon"])
    cases = bench_loss.loss_cases(args, {"paper-bank": (6, 40, 8, 3)})
    providers = {c["provider"] for c in cases}
    assert {"pixcontrast-cpu/hardest", "pixcontrast-cpu/semi-hard",
            "pixcontrast-cpu/supcon"} <= providers
    assert not any(p.startswith("pixcontrast-cuda/") for p in providers)
    a, y, c, z = bench_loss.make_inputs(6, 40, 8, 3, torch.float32, "cpu")
    with torch.no_grad():
        for variant, kwargs in bench_loss.VARIANTS.items():
            got = bench_loss.loss_fn(f"pixcontrast-cpu/{variant}")(a, y, c, z)
            want = fused_pixel_contrast(a, y, c, z, backend="torch", **kwargs)
            assert torch.allclose(got, want, rtol=1e-5), variant
        plain = bench_loss.loss_fn("pixcontrast-cpu")(a, y, c, z)
        assert not torch.allclose(plain, bench_loss.loss_fn("pixcontrast-cpu/supcon")(a, y, c, z))
