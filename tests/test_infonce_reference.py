"""The dense reference is checked against the paper's formula written literally, and the
2021 dense baseline (pixcontrast.baselines, what bench_loss.py times) against the reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pixcontrast.baselines import unfused_pixel_contrast
from pixcontrast.infonce import pixel_contrast_reference
from tests._oracle import IGNORE, make_case


def literal_loss(case, base_temperature=0.07):
    """ℓ_i = −mean_p log(e^{s_ip} / (e^{s_ip} + Σ_n e^{s_in})), loops, float64."""
    a = F.normalize(case.anchors.double(), dim=1)
    cols, z, is_self = [], [], []
    if case.contrast is None or case.include_anchors:
        cols += list(a)
        z += case.labels.tolist()
        is_self += list(range(len(a)))
    if case.contrast is not None:
        cols += list(F.normalize(case.contrast.double(), dim=1))
        z += case.contrast_labels.tolist()
        is_self += [-1] * len(case.contrast)
    per_anchor = []
    for i, y in enumerate(case.labels.tolist()):
        if y == IGNORE:
            continue
        s = [float(a[i] @ c) / case.temperature for c in cols]
        ok = [j for j in range(len(cols)) if z[j] != IGNORE and is_self[j] != i]
        pos = [j for j in ok if z[j] == y]
        neg = [j for j in ok if z[j] != y]
        if not pos:
            continue
        neg_sum = sum(math.exp(s[j]) for j in neg)
        terms = [math.log(math.exp(s[p]) / (math.exp(s[p]) + neg_sum)) for p in pos]
        per_anchor.append(-sum(terms) / len(terms))
    if not per_anchor:
        return 0.0
    return case.temperature / base_temperature * sum(per_anchor) / len(per_anchor)


@pytest.mark.parametrize("mode", ["self", "bank", "bank+anchors"])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_reference_is_the_papers_formula(mode, temperature):
    case = make_case(mode, n=15, m=23, d=6, temperature=temperature, dtype=torch.float64)
    ours = pixel_contrast_reference(case.anchors, case.labels, case.contrast,
                                    case.contrast_labels, **case.kwargs())
    assert ours.item() == pytest.approx(literal_loss(case), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("mode", ["self", "bank"])
def test_unfused_baseline_computes_the_same_loss(mode):
    """The benchmark baseline is the same loss when every anchor has a positive."""
    case = make_case(mode, n=24, m=40, d=16, no_positive_rows=0, ignore_frac=0.0)
    # every class at least twice among the anchors and in the bank: the 2021 formulation
    # is NaN for an anchor without a positive (one of the defects we do not reproduce)
    case.labels = torch.randperm(24) % 5
    if case.contrast_labels is not None:
        case.contrast_labels = torch.randperm(40) % 5
    ref = pixel_contrast_reference(case.anchors, case.labels, case.contrast,
                                   case.contrast_labels)
    base = unfused_pixel_contrast(case.anchors, case.labels, case.contrast,
                                  case.contrast_labels)
    assert base.item() == pytest.approx(ref.item(), rel=1e-5)
