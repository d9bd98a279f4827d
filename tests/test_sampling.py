"""sample_anchors against a literal Python-loop oracle of docs/design.md §2's rule.

The samples are random, so the tests check what the rule fixes: which (image, class) pairs
are sampled, how many hard and easy pixels each gets, that every pixel is real, distinct and
of its claimed class, the layout (pairs in (image, class) order, hard first, padding), the
generator's reproducibility, and the uniformity of the draws by frequency.
"""

from __future__ import annotations

import math
import os
import random

import pytest
import torch

from pixcontrast.sampling import _sample_fused, sample_anchors

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton needs CUDA or TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=pytest.mark.gpu)]


def device_for(backend: str) -> str:
    """Where a backend's test tensors live: CUDA for "cuda", and for "triton" when a GPU is
    there (the interpreter only runs CPU tensors under TRITON_INTERPRET=1)."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


# --------------------------------------------------------------------------------------
# Oracle: the rule, word for word, with Python loops and ints
# --------------------------------------------------------------------------------------

def oracle(labels: torch.Tensor, preds: torch.Tensor, max_samples: int, max_views: int,
           ignore_index: int):
    """Eligible pairs {(b, c): (hard, easy)}, V, and the quota function."""
    pairs = {}
    B = labels.shape[0]
    for b in range(B):
        lab = labels[b].flatten().tolist()
        pred = preds[b].flatten().tolist()
        for c in sorted(set(lab)):
            if c == ignore_index:
                continue
            hard = sum(1 for x, p in zip(lab, pred) if x == c and p != c)
            easy = sum(1 for x, p in zip(lab, pred) if x == c and p == c)
            if hard + easy > max_views:
                pairs[(b, c)] = (hard, easy)
    T = len(pairs)
    V = max(min(max_samples // T, max_views), 1) if T else 0
    return pairs, V


def quota(hard: int, easy: int, V: int) -> tuple[int, int]:
    if hard >= V / 2 and easy >= V / 2:
        return V // 2, V - V // 2
    if hard >= V / 2:
        return V - easy, easy
    return hard, V - hard


def check_sample(idx, out_lab, labels, preds, max_samples, max_views, ignore_index):
    """Assert every property the rule fixes; returns {(b, c): (hard, easy)} sampled."""
    assert idx.shape == (max_samples,) and out_lab.shape == (max_samples,)
    assert idx.dtype == torch.int64 and out_lab.dtype == torch.int64
    assert idx.device == labels.device and out_lab.device == labels.device
    idx, out_lab = idx.cpu().tolist(), out_lab.cpu().tolist()
    B, h, w = labels.shape
    hw = h * w
    flat_lab = labels.cpu().flatten().tolist()
    flat_pred = preds.cpu().flatten().tolist()
    pairs, V = oracle(labels.cpu(), preds.cpu(), max_samples, max_views, ignore_index)

    used = [i for i in idx if i != -1]
    k = len(used)
    assert idx[:k] == used, "used rows must form a prefix"
    assert all(x == ignore_index for x in out_lab[k:]), "unused rows carry ignore_index"
    assert len(set(used)) == k, "a pixel was sampled twice"
    assert all(0 <= i < B * hw for i in used)

    got = {}
    keys = []
    for i, c in zip(used, out_lab[:k]):
        assert flat_lab[i] == c, "sampled pixel's label differs from the claimed one"
        assert c != ignore_index
        easy = flat_pred[i] == c
        keys.append((i // hw, c, easy))
        hard_n, easy_n = got.get((i // hw, c), (0, 0))
        got[(i // hw, c)] = (hard_n + (not easy), easy_n + easy)
    assert keys == sorted(keys), "rows must be in (image, class, hard-then-easy) order"

    T = len(pairs)
    assert set(got) <= set(pairs), "a sampled pair is not eligible"
    assert len(got) == min(T, max_samples)
    for key, counts in got.items():
        assert counts == quota(*pairs[key], V), (key, pairs[key], V, counts)
    assert k == V * min(T, max_samples) <= max_samples
    return got


# --------------------------------------------------------------------------------------
# Random maps with classes near max_views, ignore pixels, every branch of the rule
# --------------------------------------------------------------------------------------

def make_maps(B, h, w, max_views, ignore_index, num_labels=6):
    """labels/preds [B, h, w] int64: per image class counts drawn around max_views (and
    small ones), hard fractions from {0, few, half, most, all}, the rest ignore."""
    rng = random.Random(torch.randint(0, 2**31, ()).item())
    hw = h * w
    values = rng.sample([v for v in range(0, 171) if v != ignore_index], num_labels)
    labels, preds = [], []
    for _ in range(B):
        lab, pred = [], []
        for c in values:
            n = rng.choice([max_views - 1, max_views, max_views + 1, max_views + 2,
                            2 * max_views + rng.randrange(max_views + 1),
                            rng.randrange(max_views + 1), 0])
            n = max(0, min(n, hw - len(lab)))
            frac = rng.choice([0.0, 0.1, 0.5, 0.9, 1.0, rng.random()])
            n_hard = round(frac * n)
            lab += [c] * n
            for j in range(n):
                if j < n_hard:  # wrong: another class, ignore_index or an unseen value
                    pred.append(rng.choice([v for v in values if v != c]
                                           + [ignore_index, c + 1000]))
                else:
                    pred.append(c)
        rest = hw - len(lab)
        lab += [ignore_index] * rest
        pred += [rng.choice(values) for _ in range(rest)]
        perm = list(range(hw))
        rng.shuffle(perm)
        labels.append([lab[p] for p in perm])
        preds.append([pred[p] for p in perm])
    return (torch.tensor(labels).reshape(B, h, w), torch.tensor(preds).reshape(B, h, w))


CASES = [  # B, h, w, max_samples, max_views, ignore_index
    (3, 12, 13, 64, 10, 255),     # V = max_samples // T
    (4, 9, 11, 1000, 8, -1),      # V capped by max_views
    (2, 16, 16, 5, 6, 255),       # T > max_samples: a pair subset, V = 1
    (5, 7, 5, 3, 2, -1),          # tiny max_views, T >> max_samples
    (1, 20, 17, 1, 30, 255),      # max_samples = 1
    (2, 10, 10, 37, 1, -1),       # max_views = 1
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_rule_against_oracle(case, backend):
    B, h, w, max_samples, max_views, ignore_index = case
    for _ in range(4):
        labels, preds = (t.to(device_for(backend))
                         for t in make_maps(B, h, w, max_views, ignore_index))
        idx, lab = sample_anchors(labels, preds, max_samples=max_samples,
                                  max_views=max_views, ignore_index=ignore_index,
                                  backend=backend)
        check_sample(idx, lab, labels, preds, max_samples, max_views, ignore_index)


@pytest.mark.parametrize("case", CASES)
def test_benchmark_loop_baseline_follows_the_rule(case):
    # benchmarks/bench_sampling.py times sample_anchors against this loop; both must
    # implement the same rule (the same oracle) for the comparison to mean anything.
    from pixcontrast.baselines import sample_anchors_loop_2021

    B, h, w, max_samples, max_views, ignore_index = case
    for _ in range(4):
        labels, preds = make_maps(B, h, w, max_views, ignore_index)
        idx, lab = sample_anchors_loop_2021(labels, preds, max_samples=max_samples,
                                            max_views=max_views, ignore_index=ignore_index)
        check_sample(idx, lab, labels, preds, max_samples, max_views, ignore_index)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pair_subset_when_T_exceeds_max_samples(backend):
    # 4 images x 6 classes of 12..20 pixels, max_views 10: T = 24 > max_samples = 7, V = 1.
    B, hw, max_views, max_samples = 4, 6 * 20, 10, 7
    labels = torch.empty(B, hw, dtype=torch.int64)
    for b in range(B):
        counts = torch.randint(11, 21, (6,))
        row = torch.repeat_interleave(torch.arange(6) * 7 + 3, counts)
        row = torch.cat([row, torch.full((hw - row.numel(),), -1)])
        labels[b] = row[torch.randperm(hw)]
    preds = torch.where(torch.rand(B, hw) < 0.5, labels, labels + 1)
    dev = device_for(backend)
    labels, preds = labels.reshape(B, 10, 12).to(dev), preds.reshape(B, 10, 12).to(dev)
    idx, lab = sample_anchors(labels, preds, max_samples=max_samples, max_views=max_views,
                              backend=backend)
    got = check_sample(idx, lab, labels, preds, max_samples, max_views, -1)
    assert len(got) == max_samples and (idx >= 0).all()
    assert all(sum(v) == 1 for v in got.values())  # V = max(7 // 24, 1) = 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_eligible_pair(backend):
    # All ignored; then every class exactly max_views pixels (not more): T = 0.
    max_views = 8
    labels = torch.full((2, 6, 8), 255)
    preds = torch.randint(0, 5, (2, 6, 8))
    row = torch.repeat_interleave(torch.tensor([0, 3, 7, 9, 11, 12]), max_views)
    small = torch.stack([row[torch.randperm(48)] for _ in range(2)]).reshape(2, 6, 8)
    dev = device_for(backend)
    for lab_map in (labels, small):
        lab_map, preds = lab_map.to(dev), preds.to(dev)
        idx, lab = sample_anchors(lab_map, preds, max_samples=16, max_views=max_views,
                                  ignore_index=255, backend=backend)
        assert (idx == -1).all() and (lab == 255).all() and idx.shape == (16,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_and_large_label_values(backend):
    # Labels are arbitrary integers: negative, above 2^32, ignore in the middle of them.
    values = torch.tensor([-7, -3, 2**40 + 5, 170, 0])
    labels = values[torch.randint(0, 5, (3, 10, 11))]
    labels = torch.where(torch.rand(labels.shape) < 0.1, 99, labels)
    wrong = values[torch.randint(0, 5, labels.shape)]
    preds = torch.where(torch.rand(labels.shape) < 0.4, wrong, labels)
    labels, preds = labels.to(device_for(backend)), preds.to(device_for(backend))
    idx, lab = sample_anchors(labels, preds, max_samples=40, max_views=15, ignore_index=99,
                              backend=backend)
    got = check_sample(idx, lab, labels, preds, 40, 15, 99)
    assert any(c < 0 for _, c in got) and any(c > 2**32 for _, c in got)


def test_reproducible_with_generator():
    labels, preds = make_maps(3, 16, 16, 12, 255)
    outs = []
    for seed in (7, 7, 8):
        g = torch.Generator().manual_seed(seed)
        outs.append(sample_anchors(labels, preds, max_samples=50, max_views=12,
                                   ignore_index=255, generator=g))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert (outs[0][0] >= 0).any()
    assert not torch.equal(outs[0][0], outs[2][0])  # another seed, other pixels


def test_inputs_not_modified_and_dtypes():
    labels, preds = make_maps(2, 8, 9, 5, -1)
    lab32, pred16 = labels.to(torch.int32), preds.to(torch.int16)
    before = (lab32.clone(), pred16.clone())
    idx, lab = sample_anchors(lab32, pred16, max_samples=20, max_views=5)
    assert torch.equal(lab32, before[0]) and torch.equal(pred16, before[1])
    check_sample(idx, lab, labels, preds, 20, 5, -1)


def _binomial_bound(count, draws, p, sigmas=5.0):
    mean = draws * p
    sd = math.sqrt(draws * p * (1 - p))
    return abs(count - mean) <= sigmas * sd


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniform_frequencies(backend):
    # One image: class 4 has 12 hard + 18 easy pixels, class 9 has 5 hard + 26 easy;
    # max_samples 16, max_views 20 -> T = 2, V = 8, and both classes have >= 4 of each kind:
    # 4 hard + 4 easy each. A hard pixel of class 4 is chosen with p = 4/12, an easy one
    # with 4/18; class 9: 4/5 and 4/26.
    hw = 80
    lab = torch.tensor([4] * 30 + [9] * 31 + [255] * 19)
    pred = lab.clone()
    pred[:12] = 9                 # class 4 hard
    pred[30:35] = 2               # class 9 hard
    pred[61:] = torch.randint(0, 10, (19,))
    perm = torch.randperm(hw)
    labels, preds = lab[perm].reshape(1, 8, 10), pred[perm].reshape(1, 8, 10)
    dev = device_for(backend)
    draws = 300 if backend == "triton" and dev == "cpu" else 1500  # the interpreter is slow
    freq = torch.zeros(hw, dtype=torch.int64)
    g = torch.Generator(device=dev).manual_seed(torch.randint(0, 2**31, ()).item())
    for _ in range(draws):
        idx, _ = sample_anchors(labels.to(dev), preds.to(dev), max_samples=16, max_views=20,
                                ignore_index=255, generator=g, backend=backend)
        idx = idx.cpu()
        freq[idx[idx >= 0]] += 1
    flat_lab, flat_pred = labels.flatten(), preds.flatten()
    for c, n_hard, n_easy in ((4, 12, 18), (9, 5, 26)):
        hard = (flat_lab == c) & (flat_pred != c)
        easy = (flat_lab == c) & (flat_pred == c)
        assert hard.sum() == n_hard and easy.sum() == n_easy
        assert (freq[hard].sum() == 4 * draws) and (freq[easy].sum() == 4 * draws)
        for mask, p in ((hard, 4 / n_hard), (easy, 4 / n_easy)):
            for count in freq[mask].tolist():
                assert _binomial_bound(count, draws, p), (c, count, draws * p)
    assert freq[flat_lab == 255].sum() == 0


def test_uniform_pair_subset():
    # 12 eligible pairs, max_samples 3: each pair kept with p = 1/4.
    B, max_views = 3, 4
    row = torch.repeat_interleave(torch.tensor([1, 5, 6, 8]), 6)
    labels = torch.stack([row[torch.randperm(24)] for _ in range(B)]).reshape(B, 4, 6)
    preds = torch.where(torch.rand(B, 4, 6) < 0.5, labels, 0)
    draws = 2000
    freq = {}
    g = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    for _ in range(draws):
        idx, lab = sample_anchors(labels, preds, max_samples=3, max_views=max_views,
                                  generator=g)
        assert (idx >= 0).all()
        for i, c in zip(idx.tolist(), lab.tolist()):
            freq[(i // 24, c)] = freq.get((i // 24, c), 0) + 1
    assert len(freq) == 12
    assert all(_binomial_bound(v, draws, 0.25) for v in freq.values()), freq


@pytest.mark.parametrize("max_samples", [4, 1000])
def test_torch_path_is_value_free(max_samples):
    # Meta tensors have shapes but no values: .item(), .nonzero(), bool(tensor), .tolist()
    # or a data-dependent shape would raise here, so this is the CPU-side proof that the
    # PyTorch path never reads a value on the host (both static branches of the subset).
    labels = torch.randint(0, 5, (2, 8, 9), device="meta")
    idx, lab = sample_anchors(labels, labels, max_samples=max_samples, max_views=3,
                              backend="torch")
    assert idx.shape == lab.shape == (max_samples,)
    assert idx.dtype == lab.dtype == torch.int64


@pytest.mark.parametrize("backend", BACKENDS[:2])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    labels, preds = (t.to(device_for(backend)) for t in make_maps(2, 9, 10, 6, 255))
    fn = torch.compile(lambda a, b: sample_anchors(a, b, max_samples=30, max_views=6,
                                                   ignore_index=255, backend=backend),
                       fullgraph=True)
    for _ in range(2):
        idx, lab = fn(labels, preds)
        check_sample(idx, lab, labels, preds, 30, 6, 255)
        labels, preds = (t.to(device_for(backend)) for t in make_maps(2, 9, 10, 6, 255))


def test_labels_beyond_2_62_are_refused():
    """The sort key 2·label + easy would wrap past 2^62: such labels are refused (without
    a host sync; on the CPU the assert fires at once) instead of sampled as other classes."""
    labels = torch.randint(0, 3, (2, 6, 6))
    ok = labels.clone()
    ok[0, 0, 0] = 2**62 - 1
    sample_anchors(ok, ok, max_samples=8, max_views=2)
    for bad in (2**62, -(2**62) - 5):
        huge = labels.clone()
        huge[1, 2, 3] = bad
        with pytest.raises(RuntimeError, match=r"labels must lie in \[-2\^62, 2\^62\)"):
            sample_anchors(huge, labels, max_samples=8, max_views=2)

def test_validation_errors_name_the_argument():
    labels = torch.randint(0, 3, (2, 4, 4))
    preds = torch.randint(0, 3, (2, 4, 4))
    with pytest.raises(ValueError, match="labels"):
        sample_anchors(labels[0], preds[0])
    with pytest.raises(TypeError, match="predictions"):
        sample_anchors(labels, preds.float())
    with pytest.raises(TypeError, match="labels"):
        sample_anchors(labels.bool(), preds)
    with pytest.raises(ValueError, match="predictions shape"):
        sample_anchors(labels, preds[:, :3])
    with pytest.raises(ValueError, match="max_samples"):
        sample_anchors(labels, preds, max_samples=0)
    with pytest.raises(ValueError, match="max_views"):
        sample_anchors(labels, preds, max_views=0)
    with pytest.raises(ValueError, match="backend"):
        sample_anchors(labels, preds, backend="cudnn")


def test_cuda_backend_refuses_cpu_tensors():
    # An explicit "cuda" never falls back: CPU tensors (and, here, an extension without CUDA
    # kernels) raise and say why.
    labels = torch.randint(0, 3, (2, 4, 4))
    with pytest.raises(RuntimeError, match=r"backend='cuda' cannot run.*need CUDA tensors"):
        sample_anchors(labels, labels, backend="cuda")


def test_cuda_backend_says_when_kernels_are_missing():
    from pixcontrast._extension import has_kernels

    if has_kernels("CUDA", "sample_histogram"):
        pytest.skip("the extension has the CUDA kernels")
    labels = torch.randint(0, 3, (2, 4, 4))
    with pytest.raises(RuntimeError, match="no CUDA kernel for sample_histogram"):
        sample_anchors(labels, labels, backend="cuda")


@pytest.mark.parametrize("kernels", ["triton", "cuda"])
@pytest.mark.parametrize("max_samples", [4, 1000])
def test_fused_paths_are_value_free(max_samples, kernels):
    # The fused driver with its ops on meta tensors (their fake kernels serve Meta): any
    # host read of a value would raise here, as in the torch path's test.
    if kernels == "cuda" and not hasattr(torch.ops.pixcontrast, "sample_select"):
        pytest.skip("extension built from older sources")
    labels = torch.randint(0, 5, (2, 8, 9), device="meta")
    idx, lab = _sample_fused(labels, labels, max_samples, 3, -1, None, kernels=kernels)
    assert idx.shape == lab.shape == (max_samples,)
    assert idx.dtype == lab.dtype == torch.int64


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    labels = torch.randint(0, 3, (2, 4, 4))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        sample_anchors(labels, labels, backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
def test_cuda_sync_free_and_graph_capturable(backend):
    labels, preds = make_maps(4, 32, 40, 50, 255, num_labels=8)
    labels, preds = labels.cuda(), preds.cuda()
    kw = dict(max_samples=300, max_views=50, ignore_index=255, backend=backend)
    idx, lab = sample_anchors(labels, preds, **kw)  # warm-up: compiles the Triton kernels
    check_sample(idx, lab, labels, preds, 300, 50, 255)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        idx, lab = sample_anchors(labels, preds, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    check_sample(idx, lab, labels, preds, 300, 50, 255)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        sample_anchors(labels, preds, **kw)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_idx, g_lab = sample_anchors(labels, preds, **kw)
    new_labels, new_preds = make_maps(4, 32, 40, 50, 255, num_labels=8)
    labels.copy_(new_labels)
    preds.copy_(new_preds)
    seen = set()
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        check_sample(g_idx, g_lab, labels, preds, 300, 50, 255)
        seen.add(tuple(g_idx.tolist()))
    assert len(seen) > 1, "replays must draw fresh random numbers"


@pytest.mark.parametrize("case", CASES)
def test_triton_matches_torch_bit_for_bit(case):
    # The fused Triton path (one sort of set << R | key) and the torch path (argsort of the
    # keys, stable sort by run) draw the same keys and order each set by (key, index).
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    B, h, w, max_samples, max_views, ignore_index = case
    dev = device_for("triton")
    labels, preds = (t.to(dev) for t in make_maps(B, h, w, max_views, ignore_index))
    for dtype in (torch.int64, torch.int32):
        seed = int(torch.randint(0, 2**31, ()))
        outs = {}
        for backend in ("torch", "triton"):
            g = torch.Generator(device=dev).manual_seed(seed)
            outs[backend] = sample_anchors(labels.to(dtype), preds.to(dtype),
                                           max_samples=max_samples, max_views=max_views,
                                           ignore_index=ignore_index, generator=g,
                                           backend=backend)
        check_sample(*outs["triton"], labels, preds, max_samples, max_views, ignore_index)
        assert torch.equal(outs["triton"][0], outs["torch"][0])
        assert torch.equal(outs["triton"][1], outs["torch"][1])


def test_triton_takes_any_int64_label():
    # The fused kernels never form 2·label: labels at the ends of int64 and spread over
    # more than one histogram window are sampled like any other.
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    values = torch.tensor([-2**63, 2**63 - 1, -3, 300, 2**62 + 7, 40])
    labels = values[torch.randint(0, 6, (3, 9, 10))]
    labels = torch.where(torch.rand(labels.shape) < 0.1, -1, labels)
    preds = torch.where(torch.rand(labels.shape) < 0.4, values[torch.randint(0, 6, labels.shape)],
                        labels)
    dev = device_for("triton")
    idx, lab = sample_anchors(labels.to(dev), preds.to(dev), max_samples=60, max_views=9,
                              backend="triton")
    got = check_sample(idx, lab, labels, preds, 60, 9, -1)
    assert {c for _, c in got} >= {-2**63, 2**63 - 1}


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES)
def test_cuda_matches_torch_bit_for_bit(case):
    # Same generator state: the backends share the random draws and the sort, and the
    # kernels are deterministic, so the samples must be identical, not merely valid.
    B, h, w, max_samples, max_views, ignore_index = case
    labels, preds = (t.cuda() for t in make_maps(B, h, w, max_views, ignore_index))
    seed = int(torch.randint(0, 2**31, ()))
    outs = {}
    for backend in ("torch", "cuda"):
        g = torch.Generator(device="cuda").manual_seed(seed)
        outs[backend] = sample_anchors(labels, preds, max_samples=max_samples,
                                       max_views=max_views, ignore_index=ignore_index,
                                       generator=g, backend=backend)
    check_sample(*outs["cuda"], labels, preds, max_samples, max_views, ignore_index)
    assert torch.equal(outs["cuda"][0], outs["torch"][0])
    assert torch.equal(outs["cuda"][1], outs["torch"][1])


@pytest.mark.gpu
def test_cuda_compile_fullgraph():
    torch._dynamo.reset()
    labels, preds = (t.cuda() for t in make_maps(2, 9, 10, 6, 255))
    fn = torch.compile(lambda a, b: sample_anchors(a, b, max_samples=30, max_views=6,
                                                   ignore_index=255, backend="cuda"),
                       fullgraph=True)
    idx, lab = fn(labels, preds)
    check_sample(idx, lab, labels, preds, 30, 6, 255)


@pytest.mark.gpu
def test_cuda_ops_name_the_bad_argument():
    # Every check reads metadata only and formats shapes itself (csrc/cuda/binding.h): a
    # failing check on a sliced argument raises (on the H200 the former ops' 1-D checks of
    # a view killed the process instead).
    i64 = torch.zeros(12, dtype=torch.int64, device="cuda")
    counter = torch.zeros(1, dtype=torch.int32, device="cuda")
    lab = i64.view(2, 6)
    hist = torch.ops.pixcontrast.sample_histogram
    keys = torch.zeros(12 + 4, dtype=torch.int64, device="cuda")  # P = 12 // 3 = 4 > 2
    with pytest.raises(RuntimeError, match="labels must be Long"):
        hist(lab.int(), lab, keys, counter, 2, 2, -1)
    with pytest.raises(RuntimeError, match="predictions must be \\[2, 6\\]"):
        hist(lab, i64[:6].view(1, 6), keys, counter, 2, 2, -1)
    with pytest.raises(RuntimeError, match="keys must be 1-D"):
        hist(lab, lab, keys[:13], counter, 2, 2, -1)
    with pytest.raises(RuntimeError, match="counter must be Int"):
        hist(lab, lab, keys, counter.long(), 2, 2, -1)
    with pytest.raises(RuntimeError, match="keys must be a CUDA tensor"):
        hist(lab, lab, keys.cpu(), counter, 2, 2, -1)
    select = torch.ops.pixcontrast.sample_select
    ws = torch.zeros(7, 2 * 2, dtype=torch.int64, device="cuda")  # pimg = 6 // 3 = 2
    out = torch.full((5,), -1, dtype=torch.int64, device="cuda")
    with pytest.raises(RuntimeError, match="ws must be \\[7, 4\\]"):
        select(lab, lab, ws[:3], out, out.clone(), 2)
    with pytest.raises(RuntimeError, match="out_lab must be 1-D"):
        select(lab, lab, ws, out, i64[:4], 2)
    with pytest.raises(RuntimeError, match="out_lab must be contiguous"):
        select(lab, lab, ws, out, torch.zeros(10, dtype=torch.int64, device="cuda")[::2], 2)
