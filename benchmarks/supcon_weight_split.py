"""SupCon's anchor row gradient in bf16 under the GPU backends' weight splits, emulated on
the CPU against float64 (docs/notes/infonce-cuda.md v2.3, infonce-triton.md v3.1).

Fast path, a bank of class means (tests/test_supcon.py's class-mean-bank case), the
backends' roundings: 'cuda' (v2.2: U holds every valid column's rounded softmax weight on
pre-normalised bf16 columns, V exact 1s), 'triton-old' (v3.0: both halves rounded with the
column scale folded in, raw columns), 'fixed' (Triton v3.1: one rounded weight per
positive), 'cuda-fixed' (v2.3). Prints the median and max relative error over seeds.

    python benchmarks/supcon_weight_split.py [--seeds 60]
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tests.test_supcon as T  # noqa: E402

bf = lambda x: x.to(torch.bfloat16).to(torch.float64)
f32 = lambda x: x.to(torch.float32).to(torch.float64)

def grads(case, tau):
    a = case.anchors.double(); c = case.contrast.double()
    y = case.labels; z = case.contrast_labels
    inv_t = 1.0 / tau
    valid = (z[None, :] >= 0) & (y[:, None] >= 0)
    pos = valid & (y[:, None] == z[None, :])
    npos = pos.sum(1).double()
    # exact
    ah = a / a.norm(dim=1, keepdim=True); ch = c / c.norm(dim=1, keepdim=True)
    s = ah @ ch.T * inv_t
    w = torch.where(valid, torch.exp(s - inv_t), 0.0); l = w.sum(1)
    exact = inv_t * ((w @ ch) / l[:, None] - (pos.double() @ ch) / npos.clamp(min=1)[:, None])
    out = {}
    # cuda: operands normalised in fp32 then rounded to bf16
    ahb = bf(f32(ah)); chb = bf(f32(ch))
    s = f32(f32(ahb @ chb.T) * inv_t)
    p = f32(torch.where(valid, torch.exp(s - inv_t), 0.0)); l = f32(p.sum(1))
    U = f32(bf(p) @ chb); V = f32(pos.double() @ chb)
    out["cuda"] = inv_t * (U / l[:, None] - V / npos.clamp(min=1)[:, None])
    # triton-old: raw bf16 operands, column scale folded into the rounded weights
    cs = f32(1.0 / c.norm(dim=1)); rs = f32(1.0 / a.norm(dim=1))
    s = f32(f32(a @ c.T) * rs[:, None] * cs[None, :] * inv_t)
    p = f32(torch.where(valid, torch.exp(s - inv_t), 0.0)); l = f32(p.sum(1))
    U = f32(bf(p * cs[None, :]) @ c); V = f32(bf(pos.double() * cs[None, :]) @ c)
    out["triton-old"] = inv_t * (U / l[:, None] - V / npos.clamp(min=1)[:, None])
    # fixed (Triton v3.1): positives' weight 1 - |P| p / l, rounded once
    U = f32(bf(torch.where(pos, 0.0, p) * cs[None, :]) @ c)
    wv = torch.where(pos, 1.0 - npos[:, None] * p / l[:, None], 0.0)
    V = f32(bf(wv * cs[None, :]) @ c)
    out["fixed"] = inv_t * (U / l[:, None] - V / npos.clamp(min=1)[:, None])
    # cuda with the fix on its pre-normalised columns
    s = f32(f32(ahb @ chb.T) * inv_t)
    p = f32(torch.where(valid, torch.exp(s - inv_t), 0.0)); l = f32(p.sum(1))
    U = f32(bf(torch.where(pos, 0.0, p)) @ chb)
    V = f32(bf(torch.where(pos, 1.0 - npos[:, None] * p / l[:, None], 0.0)) @ chb)
    out["cuda-fixed"] = inv_t * (U / l[:, None] - V / npos.clamp(min=1)[:, None])
    rows = npos > 0
    return {k: ((v - exact)[rows].norm() / exact[rows].norm()).item() for k, v in out.items()}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--seeds", type=int, default=60)
args = parser.parse_args()
res = {}
for seed in range(args.seeds):
    torch.manual_seed(seed)
    case = T._class_mean_bank_case(torch.bfloat16)
    for k, v in grads(case, case.temperature).items():
        res.setdefault(k, []).append(v)
for k, v in res.items():
    print(f"{k:12s} median {statistics.median(v):.3e}  max {max(v):.3e}")
