"""MemoryBank: FIFO rings against a float64 loop oracle, storage, Triton write, DDP, syncs."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from pixcontrast.memory_bank import MemoryBank, class_sums

IGNORE = -1
HAS_TRITON = importlib.util.find_spec("triton") is not None
# The torch path and the fused Triton update (interpreter on CPU) against the same oracle.
UPDATE_BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    not HAS_TRITON or (not torch.cuda.is_available()
                       and os.environ.get("TRITON_INTERPRET") != "1"),
    reason="needs triton (CUDA or TRITON_INTERPRET=1)"))]


def make_batch(b: int, d: int, h: int, w: int, k: int, device="cpu",
               dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Random embeddings (non-zero mean, so class means are not ~0) and labels with
    ignored pixels, out-of-range labels and classes absent from some images."""
    emb = (torch.randn(b, d, h, w, dtype=torch.float64) + 0.5).to(dtype)
    labels = torch.randint(0, k, (b, h, w))
    # each image drops a random subset of classes
    absent = torch.rand(b, k) < 0.3
    labels = torch.where(absent.gather(1, labels.flatten(1)).view(b, h, w), IGNORE, labels)
    noise = torch.rand(b, h, w)
    labels = torch.where(noise < 0.1, IGNORE, labels)
    labels = torch.where(noise > 0.95, k + 3, labels)        # out of range: ignored
    return emb.to(device), labels.to(device)


def oracle(batches, k: int, size: int, ppu: int):
    """Plain loops in float64. Returns per class (segment entry list, pixel group list),
    in enqueue order; a pixel group is (group id, candidate normalised pixels [n, D]) and
    appears once per pixel entry it contributes."""
    seg = [[] for _ in range(k)]
    pix = [[] for _ in range(k)]
    gid = 0
    for emb, labels in batches:
        emb = emb.double().cpu()
        labels = labels.cpu()
        for b in range(emb.shape[0]):
            for c in range(k):
                m = labels[b] == c
                n = int(m.sum())
                if n == 0:
                    continue
                x = emb[b][:, m].T                              # [n, D]
                mean = x.sum(0) / n
                seg[c].append(mean / mean.norm())
                cand = x / x.norm(dim=1, keepdim=True)
                pix[c] += [(gid, cand)] * min(ppu, n)
                gid += 1
    return seg, pix


def ring(entries: list, size: int) -> dict[int, int]:
    """slot -> index of the entry that survives there (FIFO from an empty ring)."""
    return {n % size: n for n in range(len(entries))}


def check_segments(bank: MemoryBank, seg, atol: float) -> None:
    k, size = bank.num_classes, bank.size
    for c in range(k):
        survivors = ring(seg[c], size)
        for slot in range(size):
            if slot in survivors:
                assert bank.labels[c, 0, slot] == c
                want = seg[c][survivors[slot]]
                got = bank.features[c, 0, slot].double().cpu()
                torch.testing.assert_close(got, want, rtol=0, atol=atol)
            else:
                assert bank.labels[c, 0, slot] == IGNORE
        assert bank.pointers[c, 0] == len(seg[c]) % size


def check_pixels(bank: MemoryBank, pix, atol: float) -> None:
    k, size = bank.num_classes, bank.size
    for c in range(k):
        survivors = ring(pix[c], size)
        got_groups: dict[int, list[int]] = {}
        for slot in range(size):
            if slot not in survivors:
                assert bank.labels[c, 1, slot] == IGNORE
                continue
            assert bank.labels[c, 1, slot] == c
            group, cand = pix[c][survivors[slot]]
            v = bank.features[c, 1, slot].double().cpu()
            dist = (cand - v).abs().amax(1)
            i = int(dist.argmin())
            assert dist[i] <= atol, f"class {c} slot {slot}: not a pixel of that class/image"
            got_groups.setdefault(group, []).append(i)
        want_counts: dict[int, int] = {}
        for n in survivors.values():
            want_counts[pix[c][n][0]] = want_counts.get(pix[c][n][0], 0) + 1
        assert {g: len(v) for g, v in got_groups.items()} == want_counts
        for picks in got_groups.values():                   # without replacement
            assert len(set(picks)) == len(picks)
        assert bank.pointers[c, 1] == len(pix[c]) % size


# ------------------------------------------------------------------------------------
# Semantics against the oracle
# ------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,ppu", [(7, 3), (50, 4), (3, 5)])
@pytest.mark.parametrize("backend", UPDATE_BACKENDS)
def test_matches_loop_oracle_over_several_updates(size, ppu, backend):
    k, d = 5, 12
    bank = MemoryBank(k, d, size=size, pixels_per_update=ppu, ignore_index=IGNORE)
    batches = [make_batch(3, d, 6, 7, k) for _ in range(4)]
    for i, (emb, labels) in enumerate(batches):
        bank.update(emb, labels, backend=backend)
        seg, pix = oracle(batches[: i + 1], k, size, ppu)
        check_segments(bank, seg, atol=1e-6)
        check_pixels(bank, pix, atol=1e-6)


@pytest.mark.parametrize("backend", UPDATE_BACKENDS)
def test_fifo_order_and_wrap_explicit(backend):
    # One class, constant embedding per image: image i's segment entry is e_i.
    d, size = 6, 3
    bank = MemoryBank(2, d, size=size, pixels_per_update=1, ignore_index=IGNORE)
    basis = torch.eye(d)
    emb = basis[:5, :, None, None].expand(5, d, 2, 2).clone() * (1 + torch.rand(5, 1, 1, 1))
    labels = torch.zeros(5, 2, 2, dtype=torch.long)
    bank.update(emb[:2], labels[:2], backend=backend)
    assert bank.pointers[0].tolist() == [2, 2] and bank.pointers[1].tolist() == [0, 0]
    bank.update(emb[2:], labels[2:], backend=backend)
    # entries 0..4 at slots n % 3: slot 0 <- image 3, slot 1 <- image 4, slot 2 <- image 2
    for q in (0, 1):
        torch.testing.assert_close(bank.features[0, q], basis[[3, 4, 2]])
    assert bank.pointers[0].tolist() == [2, 2]
    assert (bank.labels[1] == IGNORE).all() and (bank.features[1] == 0).all()


@pytest.mark.parametrize("backend", UPDATE_BACKENDS)
def test_pointer_steps_by_entries_written(backend):
    k, d, ppu = 4, 8, 3
    bank = MemoryBank(k, d, size=100, pixels_per_update=ppu, ignore_index=IGNORE)
    labels = torch.full((2, 4, 4), IGNORE)
    labels[0, 0, :2] = 1          # 2 pixels of class 1 in image 0
    labels[1, 1, :] = 1           # 4 pixels of class 1 in image 1
    labels[1, 2, :] = 3           # 4 pixels of class 3 in image 1
    bank.update(torch.randn(2, d, 4, 4), labels, backend=backend)
    assert bank.pointers.tolist() == [[0, 0], [2, 2 + 3], [0, 0], [1, 3]]
    bank.update(torch.randn(2, d, 4, 4), labels, backend=backend)
    assert bank.pointers.tolist() == [[0, 0], [4, 10], [0, 0], [2, 6]]


@pytest.mark.parametrize("backend", UPDATE_BACKENDS)
def test_more_entries_than_size_in_one_update(backend):
    k, d, size, ppu = 2, 5, 4, 3
    bank = MemoryBank(k, d, size=size, pixels_per_update=ppu, ignore_index=IGNORE)
    emb, _ = make_batch(6, d, 3, 3, k)
    labels = torch.zeros(6, 3, 3, dtype=torch.long)
    labels[:, 0, 0] = 1                          # class 1: one pixel per image
    bank.update(emb, labels, backend=backend)
    seg, pix = oracle([(emb, labels)], k, size, ppu)
    check_segments(bank, seg, atol=1e-6)         # 6 segment entries, last 4 survive
    check_pixels(bank, pix, atol=1e-6)           # 18 pixel entries of class 0, last 4
    # class 0's pixel ring holds the last 4 entries: images 4 (1 pick) and 5 (3 picks)
    groups = [pix[0][n][0] for n in ring(pix[0], size).values()]
    assert sorted(groups) == sorted([pix[0][14][0]] + [pix[0][15][0]] * 3)
    assert bank.pointers.tolist() == [[6 % size, 18 % size], [6 % size, 6 % size]]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_batch_without_valid_pixels_changes_nothing(backend):
    if backend == "triton" and not _triton_runs_here():
        pytest.skip("needs triton (CUDA or TRITON_INTERPRET=1)")
    k, d = 3, 6
    bank = MemoryBank(k, d, size=4, pixels_per_update=2, ignore_index=IGNORE)
    bank.update(*make_batch(2, d, 3, 3, k), backend=backend)
    before = {n: t.clone() for n, t in bank.state_dict().items()}
    labels = torch.full((2, 3, 3), IGNORE)
    labels[0, 0, 0] = k                                      # out of range: ignored too
    bank.update(torch.randn(2, d, 3, 3), labels, backend=backend)
    for name, buf in bank.state_dict().items():
        assert torch.equal(buf, before[name]), name


def test_never_written_slots_are_ignored_by_the_loss():
    from pixcontrast.ops import fused_pixel_contrast

    k, d = 4, 16
    bank = MemoryBank(k, d, size=20, pixels_per_update=2, ignore_index=IGNORE)
    emb, labels = make_batch(2, d, 5, 5, k)
    bank.update(emb, labels)
    feats, lbls = bank.contrast()
    assert (lbls == IGNORE).any() and (lbls != IGNORE).any()
    assert (feats[lbls == IGNORE] == 0).all()     # no random vectors in unwritten slots
    written = lbls != IGNORE
    anchors, y = torch.randn(9, d, dtype=torch.float64), torch.randint(0, k, (9,))
    full = fused_pixel_contrast(anchors, y, feats.double(), lbls, backend="reference")
    only = fused_pixel_contrast(anchors, y, feats[written].double(), lbls[written],
                                backend="reference")
    torch.testing.assert_close(full, only)


def test_contrast_is_a_view():
    bank = MemoryBank(3, 8, size=10)
    feats, lbls = bank.contrast()
    assert feats.shape == (3 * 2 * 10, 8) and lbls.shape == (60,)
    assert feats.data_ptr() == bank.features.data_ptr()
    assert lbls.data_ptr() == bank.labels.data_ptr()
    bank.update(*make_batch(2, 8, 4, 4, 3))
    assert torch.equal(feats, bank.features.view(60, 8))
    assert torch.equal(lbls, bank.labels.view(60))


def test_state_dict_round_trip_continues_identically():
    k, d = 4, 10
    bank = MemoryBank(k, d, size=9, pixels_per_update=3, ignore_index=IGNORE)
    for _ in range(3):
        bank.update(*make_batch(2, d, 5, 5, k))
    state = bank.state_dict()
    assert set(state) == {"features", "labels", "pointers"}
    resumed = MemoryBank(k, d, size=9, pixels_per_update=3, ignore_index=IGNORE)
    resumed.load_state_dict(state)
    for a, b in zip(bank.contrast(), resumed.contrast()):
        assert torch.equal(a, b)
    emb, labels = make_batch(2, d, 5, 5, k)
    seed = int(torch.randint(0, 2**31, ()))
    bank.update(emb, labels, torch.Generator().manual_seed(seed))
    resumed.update(emb, labels, torch.Generator().manual_seed(seed))
    for name, buf in bank.state_dict().items():
        assert torch.equal(buf, resumed.state_dict()[name]), name


@pytest.mark.parametrize("emb_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", UPDATE_BACKENDS)
def test_bf16_storage(emb_dtype, backend):
    k, d = 3, 32
    b16 = MemoryBank(k, d, size=30, pixels_per_update=2, dtype=torch.bfloat16)
    b32 = MemoryBank(k, d, size=30, pixels_per_update=2, dtype=torch.float32)
    assert b16.features.dtype == torch.bfloat16 and b16.contrast()[0].dtype == torch.bfloat16
    emb, labels = make_batch(3, d, 6, 6, k, dtype=emb_dtype)
    seed = int(torch.randint(0, 2**31, ()))
    b16.update(emb, labels, torch.Generator().manual_seed(seed), backend=backend)
    b32.update(emb, labels, torch.Generator().manual_seed(seed), backend=backend)
    assert torch.equal(b16.labels, b32.labels) and torch.equal(b16.pointers, b32.pointers)
    # The same picks; fp32 means and normalisation, rounded once to bf16.
    assert torch.equal(b16.features, b32.features.to(torch.bfloat16))
    seg, _ = oracle([(emb, labels)], k, 30, 2)
    ref = b16.features.double()
    check = MemoryBank(k, d, size=30, pixels_per_update=2)
    check.load_state_dict({**b16.state_dict(), "features": ref.float()})
    check_segments(check, seg, atol=2 ** -8)


def test_embeddings_get_no_gradient_and_are_not_modified():
    bank = MemoryBank(3, 8, size=10)
    emb, labels = make_batch(2, 8, 4, 4, 3)
    emb.requires_grad_(True)
    before, before_labels = emb.detach().clone(), labels.clone()
    bank.update(emb, labels)
    assert not bank.features.requires_grad
    assert torch.equal(emb.detach(), before) and torch.equal(labels, before_labels)


@pytest.mark.parametrize("backend", UPDATE_BACKENDS)
def test_int32_and_uint8_labels(backend):
    k, d = 4, 6
    emb, labels = make_batch(2, d, 5, 5, k)
    labels = torch.where(labels == k + 3, IGNORE, labels)
    banks = {}
    for dt in (torch.int64, torch.int32):
        banks[dt] = MemoryBank(k, d, size=20, ignore_index=IGNORE)
        banks[dt].update(emb, labels.to(dt), torch.Generator().manual_seed(1),
                         backend=backend)
    bank8 = MemoryBank(k, d, size=20, ignore_index=255)
    bank8.update(emb, torch.where(labels == IGNORE, 255, labels).to(torch.uint8),
                 torch.Generator().manual_seed(1), backend=backend)
    assert torch.equal(banks[torch.int64].features, banks[torch.int32].features)
    assert torch.equal(banks[torch.int64].features, bank8.features)
    assert torch.equal(bank8.labels == 255, banks[torch.int64].labels == IGNORE)


def test_benchmark_loop_baseline_matches_the_oracle():
    # benchmarks/bench_memory_bank.py (and bench_sampling.py's sampling+update) time
    # MemoryBank.update against this loop; both must implement the same semantics for the
    # comparison to mean anything.
    from pixcontrast.baselines import memory_bank_update_loop_2021

    k, d, size, ppu = 4, 9, 6, 3
    bank = MemoryBank(k, d, size=size, pixels_per_update=ppu, ignore_index=IGNORE)
    batches = [make_batch(3, d, 4, 5, k) for _ in range(2)]
    for emb, labels in batches:
        memory_bank_update_loop_2021(bank.features, bank.labels, bank.pointers, emb, labels,
                                     ppu, IGNORE)
    seg, pix = oracle(batches, k, size, ppu)
    check_segments(bank, seg, atol=1e-6)
    check_pixels(bank, pix, atol=1e-6)


@pytest.mark.parametrize("backend", UPDATE_BACKENDS)
def test_update_refuses_nan_and_inf_embeddings(backend):
    """A NaN or Inf is refused at update, naming the argument, and the bank is unchanged
    (before: stored silently, reported only by the next loss call)."""
    bank = MemoryBank(3, 8, size=10, ignore_index=IGNORE)
    emb, labels = make_batch(2, 8, 4, 5, 3)
    before = {n: t.clone() for n, t in bank.state_dict().items()}
    for bad, label in ((float("nan"), 1), (float("inf"), 2), (float("nan"), IGNORE)):
        broken, lab = emb.clone(), labels.clone()
        broken[1, 3, 2, 1] = bad
        lab[1, 2, 1] = label  # a pixel of a class, or an ignored one: refused either way
        with pytest.raises(RuntimeError, match="MemoryBank.update: embeddings contain NaN"):
            bank.update(broken, lab, backend=backend)
        for name, buf in bank.state_dict().items():
            assert torch.equal(buf, before[name]), name
    bank.update(emb, labels, backend=backend)  # finite embeddings still go in
    assert (bank.labels != IGNORE).any()

# ------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------

def test_update_validation_names_the_argument():
    bank = MemoryBank(3, 8, size=10)
    emb, labels = make_batch(2, 8, 4, 4, 3)
    with pytest.raises(ValueError, match="embeddings must be 4-D"):
        bank.update(emb[0], labels)
    with pytest.raises(ValueError, match="D=7.*dim=8"):
        bank.update(emb[:, :7], labels)
    with pytest.raises(TypeError, match="embeddings must be float"):
        bank.update(emb.long(), labels)
    with pytest.raises(TypeError, match="labels must be an integer"):
        bank.update(emb, labels.float())
    with pytest.raises(ValueError, match="labels must be"):
        bank.update(emb, labels[:, :3])
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        bank.update(emb, labels.tolist())
    with pytest.raises(ValueError, match="backend"):
        bank.update(emb, labels, backend="cudnn")
    with pytest.raises(ValueError, match="ignore_index=0"):
        MemoryBank(3, 8, ignore_index=0)
    with pytest.raises(ValueError, match="size"):
        MemoryBank(3, 8, size=0)
    with pytest.raises(TypeError, match="dtype"):
        MemoryBank(3, 8, dtype=torch.int32)


def test_cuda_backend_refuses_a_cpu_bank():
    # An explicit "cuda" never falls back to the torch write: it raises and says why.
    bank = MemoryBank(3, 8, size=10)
    before = {n: t.clone() for n, t in bank.state_dict().items()}
    with pytest.raises(RuntimeError,
                       match=r"MemoryBank.update: backend='cuda' cannot run.*CUDA tensors"):
        bank.update(*make_batch(1, 8, 3, 3, 3), backend="cuda")
    for name, buf in bank.state_dict().items():
        assert torch.equal(buf, before[name]), name


def test_cuda_backend_says_when_kernels_are_missing():
    from pixcontrast._extension import has_kernels

    if has_kernels("CUDA", "bank_write"):
        pytest.skip("the extension has the CUDA kernels")
    bank = MemoryBank(3, 8, size=10)
    with pytest.raises(RuntimeError, match="no CUDA kernel for bank_write"):
        bank.update(*make_batch(1, 8, 3, 3, 3), backend="cuda")


@pytest.mark.parametrize("kernels", ["triton", "cuda"])
def test_fused_update_is_value_free(kernels):
    # The fused update's driver on meta tensors (the ops' fake kernels serve Meta): any
    # host read of a value would raise here.
    if kernels == "cuda" and not hasattr(torch.ops.pixcontrast, "bank_update"):
        pytest.skip("extension built from older sources")
    bank = MemoryBank(5, 8, size=10, pixels_per_update=3).to("meta")
    emb = torch.empty(2, 8, 4, 5, device="meta")
    labels = torch.empty(2, 4, 5, dtype=torch.int32, device="meta")
    bank._update_fused(emb, labels, None, kernels=kernels)
    assert bank._counters.shape == (3,)


def test_cuda_enqueue_is_value_free():
    # The enqueue with the CUDA op on meta tensors (its fake kernel serves Meta): a host
    # read of any value in the "cuda" path would raise here.
    bank = MemoryBank(4, 8, size=6, pixels_per_update=2).to("meta")
    emb = torch.empty(3, 8, 4, 5, device="meta")
    labels = torch.empty(3, 4, 5, dtype=torch.long, device="meta")
    bank._enqueue(*bank._entries(emb, labels, None), "cuda")
    assert bank.features.shape == (4, 2, 6, 8) and bank.features.device.type == "meta"


def test_triton_backend_refuses_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    bank = MemoryBank(3, 8, size=10)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        bank.update(*make_batch(1, 8, 3, 3, 3), backend="triton")


# ------------------------------------------------------------------------------------
# No host sync: the whole update traces as one graph
# ------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", UPDATE_BACKENDS)
def test_update_traces_fullgraph(backend):
    # Any .item(), .nonzero(), .tolist() or bool(tensor) would be a graph break, which
    # fullgraph=True turns into an error. (Dynamo cannot take an explicit Generator: the
    # compiled and the eager bank both draw from the seeded global RNG.)
    torch._dynamo.reset()
    k, d = 4, 8
    bank = MemoryBank(k, d, size=6, pixels_per_update=2, ignore_index=IGNORE)
    eager = MemoryBank(k, d, size=6, pixels_per_update=2, ignore_index=IGNORE)
    step = torch.compile(bank.update, fullgraph=True, backend="eager")
    for _ in range(2):
        emb, labels = make_batch(3, d, 4, 5, k)
        seed = int(torch.randint(0, 2**31, ()))
        torch.manual_seed(seed)
        step(emb, labels, backend=backend)
        torch.manual_seed(seed)
        eager.update(emb, labels, backend=backend)
    for name, buf in bank.state_dict().items():
        assert torch.equal(buf, eager.state_dict()[name]), name


# ------------------------------------------------------------------------------------
# Triton write (interpreter on CPU)
# ------------------------------------------------------------------------------------

def _triton_runs_here() -> bool:
    return HAS_TRITON and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")


@pytest.mark.skipif(not _triton_runs_here(), reason="needs triton (CUDA or TRITON_INTERPRET=1)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("size,d", [(5, 7), (40, 300)])
def test_triton_update_matches_torch(dtype, size, d):
    # The fused update draws the same keys and makes the same picks as the torch path:
    # the same slots, labels and pointers; the values differ only by the order of the
    # class sums (one-hot GEMM partials vs scatter_add) and of the norms.
    k = 3
    banks = {be: MemoryBank(k, d, size=size, pixels_per_update=3, ignore_index=IGNORE,
                            dtype=dtype) for be in ("torch", "triton")}
    for _ in range(3):
        emb, labels = make_batch(4, d, 4, 3, k)
        seed = int(torch.randint(0, 2**31, ()))
        for be, bank in banks.items():
            bank.update(emb, labels, torch.Generator().manual_seed(seed), backend=be)
    ref, got = banks["torch"], banks["triton"]
    assert torch.equal(ref.labels, got.labels) and torch.equal(ref.pointers, got.pointers)
    # one rounding of the storage dtype apart at most
    atol = {torch.float32: 1e-6, torch.bfloat16: 2 ** -8, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(got.features.double(), ref.features.double(), rtol=0, atol=atol)
    assert (got.labels != IGNORE).any()


@pytest.mark.skipif(not _triton_runs_here(), reason="needs triton (CUDA or TRITON_INTERPRET=1)")
def test_triton_update_picks_across_programs():
    # Images of 960 pixels: the fused kernel splits each over ~30 programs, whose local
    # picks (rare classes included: a few pixels anywhere in the random order) are merged
    # in order. The same picks as the torch path, hence the same slots; values close.
    k, d, ppu = 6, 5, 4
    banks = {be: MemoryBank(k, d, size=50, pixels_per_update=ppu, ignore_index=IGNORE)
             for be in ("torch", "triton")}
    emb, labels = make_batch(2, d, 24, 40, k)
    rare = torch.rand(labels.shape) < 0.004                     # class k - 1: a few pixels
    labels = torch.where(labels == k - 1, 0, labels)
    labels = torch.where(rare, k - 1, labels)
    for be, bank in banks.items():
        bank.update(emb, labels, torch.Generator().manual_seed(5), backend=be)
    ref, got = banks["torch"], banks["triton"]
    assert torch.equal(ref.labels, got.labels) and torch.equal(ref.pointers, got.pointers)
    torch.testing.assert_close(got.features, ref.features, rtol=0, atol=1e-6)
    seg, pix = oracle([(emb, labels)], k, 50, ppu)
    check_segments(got, seg, atol=1e-6)
    check_pixels(got, pix, atol=1e-6)


@pytest.mark.skipif(not _triton_runs_here(), reason="needs triton (CUDA or TRITON_INTERPRET=1)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_write_of_given_entries_matches_torch(dtype):
    # The write kernel alone (the distributed path's): the same entries, the same bits.
    k, d = 3, 10
    banks = {be: MemoryBank(k, d, size=6, pixels_per_update=2, ignore_index=IGNORE,
                            dtype=dtype) for be in ("torch", "triton")}
    for _ in range(3):
        emb, labels = make_batch(3, d, 4, 3, k, dtype=dtype)
        entries = banks["torch"]._entries(emb, labels, None)
        for be, bank in banks.items():
            bank._enqueue(*entries, be)
    for name, buf in banks["torch"].state_dict().items():
        assert torch.equal(buf, banks["triton"].state_dict()[name]), name


# ------------------------------------------------------------------------------------
# torch.distributed: 2 gloo processes on CPU
# ------------------------------------------------------------------------------------

def _ddp_worker(rank: int, tmp: str, world: int) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank,
                            world_size=world)
    try:
        data = torch.load(f"{tmp}/data.pt")
        bank = MemoryBank(**data["config"])
        gen = torch.Generator().manual_seed(1000 + rank)
        for emb, labels in data["batches"][rank]:
            bank.update(emb, labels, gen)
        torch.save(bank.state_dict(), f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ddp_replicas_identical_and_match_concatenated_batch(tmp_path, dtype):
    import torch.multiprocessing as mp

    world, k, d, size, ppu = 2, 4, 8, 9, 2
    config = dict(num_classes=k, dim=d, size=size, pixels_per_update=ppu,
                  ignore_index=IGNORE, dtype=dtype)
    batches = [[make_batch(3, d, 4, 5, k) for _ in range(3)] for _ in range(world)]
    torch.save({"config": config, "batches": batches}, tmp_path / "data.pt")
    mp.spawn(_ddp_worker, args=(str(tmp_path), world), nprocs=world, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name

    # A single-process bank fed the concatenated batches in rank order.
    concat = [(torch.cat([batches[r][i][0] for r in range(world)]),
               torch.cat([batches[r][i][1] for r in range(world)])) for i in range(3)]
    single = MemoryBank(**config)
    for emb, labels in concat:
        single.update(emb, labels)
    assert torch.equal(states[0]["labels"], single.labels)
    assert torch.equal(states[0]["pointers"], single.pointers)
    torch.testing.assert_close(states[0]["features"][:, 0], single.features[:, 0],
                               rtol=0, atol=1e-6 if dtype == torch.float32 else 2 ** -8)
    replica = MemoryBank(**{**config, "dtype": torch.float32})
    replica.load_state_dict({**states[0], "features": states[0]["features"].float()})
    seg, pix = oracle(concat, k, size, ppu)
    atol = 1e-6 if dtype == torch.float32 else 2 ** -8
    check_segments(replica, seg, atol=atol)
    check_pixels(replica, pix, atol=atol)


# ------------------------------------------------------------------------------------
# Class sums: both fixed-order methods against float64 loops
# ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["scatter", "matmul"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_class_sums_match_float64_loops(method, dtype):
    b, d, hw, bins = 3, 37, 501, 6
    x = (torch.randn(b, d, hw, dtype=torch.float64) + 0.5)
    y = torch.randint(0, bins, (b, hw))
    y[1][y[1] == 2] = 3  # a class absent from one image: its sum is exactly 0
    got = class_sums(x.to(dtype), y, bins, method=method)
    assert got.shape == (b, d, bins) and got.dtype == dtype
    want = torch.stack([torch.stack([x[i][:, y[i] == c].sum(1) for c in range(bins)], 1)
                        for i in range(b)])
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    assert torch.count_nonzero(got[1, :, 2]) == 0
    assert torch.equal(got, class_sums(x.to(dtype), y, bins, method=method))


def test_class_sums_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="method must be"):
        class_sums(torch.randn(1, 2, 3), torch.zeros(1, 3, dtype=torch.long), 2, "atomic")


# ------------------------------------------------------------------------------------
# GPU
# ------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_update_has_no_host_sync_and_matches_oracle(dtype, backend):
    k, d, size, ppu = 19, 64, 50, 10
    bank = MemoryBank(k, d, size=size, pixels_per_update=ppu, ignore_index=IGNORE,
                      dtype=dtype).cuda()
    batches = [make_batch(4, d, 32, 64, k, device="cuda") for _ in range(3)]
    gen = torch.Generator(device="cuda").manual_seed(0)
    bank.update(*batches[0], gen, backend=backend)  # warm-up: Triton compile, allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for emb, labels in batches[1:]:
            bank.update(emb, labels, gen, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu = MemoryBank(k, d, size=size, pixels_per_update=ppu, ignore_index=IGNORE)
    cpu.load_state_dict({n: t.cpu().float() if t.is_floating_point() else t.cpu()
                         for n, t in bank.state_dict().items()})
    seg, pix = oracle(batches, k, size, ppu)
    atol = 1e-5 if dtype == torch.float32 else 2 ** -8
    check_segments(cpu, seg, atol=atol)
    check_pixels(cpu, pix, atol=atol)


def enqueue_same_entries(backends, k, d, size, ppu, dtype, batches):
    """Banks that differ only in the write backend, fed the same entries (``_entries`` is
    computed once per batch and enqueued into each bank): the writes must agree bit for bit."""
    banks = {be: MemoryBank(k, d, size=size, pixels_per_update=ppu, ignore_index=IGNORE,
                            dtype=dtype).cuda() for be in backends}
    for emb, labels in batches:
        gen = torch.Generator(device="cuda").manual_seed(int(torch.randint(0, 2**31, ())))
        entries = banks[backends[0]]._entries(emb, labels, gen)
        for be, bank in banks.items():
            bank._enqueue(*entries, be)
    return banks


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_gpu_fused_update_matches_torch(backend, dtype):
    # The fused updates draw the torch path's keys and make its picks: the same slots,
    # labels and pointers; values to rounding. Several blocks per image (64 x 96 pixels),
    # a rare class, several updates.
    k, d, ppu = 19, 64, 10
    banks = {be: MemoryBank(k, d, size=40, pixels_per_update=ppu, ignore_index=IGNORE,
                            dtype=dtype).cuda() for be in ("torch", backend)}
    for _ in range(3):
        emb, labels = make_batch(4, d, 64, 96, k, device="cuda")
        labels = torch.where(torch.rand(labels.shape, device="cuda") < 0.001, k - 1, labels)
        seed = int(torch.randint(0, 2**31, ()))
        for be, bank in banks.items():
            bank.update(emb, labels, torch.Generator(device="cuda").manual_seed(seed),
                        backend=be)
    ref, got = banks["torch"], banks[backend]
    assert torch.equal(ref.labels, got.labels) and torch.equal(ref.pointers, got.pointers)
    atol = {torch.float32: 1e-5, torch.bfloat16: 2 ** -7, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(got.features.double(), ref.features.double(), rtol=0,
                               atol=atol)
    # (A NaN would be a device-side assert here, which kills the process's CUDA context:
    # the refusal is tested on the CPU, test_update_refuses_nan_and_inf_embeddings.)


@pytest.mark.gpu
def test_gpu_entries_are_deterministic():
    # (4 classes, D=300, 30 pixels per image): several pixels per (image, class) spread
    # over many CTAs, the case whose float-atomic sums differed between two calls.
    k, d = 4, 300
    bank = MemoryBank(k, d, size=40, pixels_per_update=3, ignore_index=IGNORE).cuda()
    emb, labels = make_batch(4, d, 6, 5, k, device="cuda")
    first = bank._entries(emb, labels, torch.Generator(device="cuda").manual_seed(3))
    second = bank._entries(emb, labels, torch.Generator(device="cuda").manual_seed(3))
    for x, y in zip(first, second):
        assert torch.equal(x, y)
    big_emb, big_labels = make_batch(8, 256, 64, 128, 19, device="cuda")
    sums = [class_sums(big_emb.flatten(2), big_labels.flatten(1).clamp(0, 19), 20)
            for _ in range(2)]
    assert torch.equal(sums[0], sums[1])


@pytest.mark.gpu
def test_gpu_triton_write_matches_torch():
    k, d = 19, 256
    batches = [make_batch(8, d, 32, 64, k, device="cuda") for _ in range(3)]
    banks = enqueue_same_entries(("torch", "triton"), k, d, 30, 10, torch.float32, batches)
    for name, buf in banks["torch"].state_dict().items():
        assert torch.equal(buf, banks["triton"].state_dict()[name]), name


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16,
                                   torch.float64])
@pytest.mark.parametrize("k,size,d,ppu", [(3, 5, 7, 3), (4, 40, 300, 3), (19, 30, 256, 10)])
def test_gpu_cuda_write_matches_torch_and_oracle(dtype, k, size, d, ppu):
    # The same entries go to both banks: the writes must agree bit for bit; the loop oracle
    # checks the semantics.
    batches = [make_batch(4, d, 6, 5, k, device="cuda") for _ in range(3)]
    banks = enqueue_same_entries(("torch", "cuda"), k, d, size, ppu, dtype, batches)
    for name, buf in banks["torch"].state_dict().items():
        assert torch.equal(buf, banks["cuda"].state_dict()[name]), name
    assert (banks["cuda"].labels != IGNORE).any()
    cpu = MemoryBank(k, d, size=size, pixels_per_update=ppu, ignore_index=IGNORE,
                     dtype=torch.float64)
    cpu.load_state_dict({n: t.cpu().double() if t.is_floating_point() else t.cpu()
                         for n, t in banks["cuda"].state_dict().items()})
    seg, pix = oracle(batches, k, size, ppu)
    atol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2 ** -9,
            torch.bfloat16: 2 ** -8}[dtype]
    check_segments(cpu, seg, atol=atol)
    check_pixels(cpu, pix, atol=atol)


@pytest.mark.gpu
def test_gpu_cuda_write_is_sync_free_and_graph_capturable():
    k, d = 19, 64
    bank = MemoryBank(k, d, size=50, pixels_per_update=10, ignore_index=IGNORE).cuda()
    twin = MemoryBank(k, d, size=50, pixels_per_update=10, ignore_index=IGNORE).cuda()
    emb, labels = make_batch(4, d, 16, 32, k, device="cuda")
    values = torch.randn(7, d, device="cuda")
    rows = torch.tensor([0, 5, 99, 3, 1000, 7, 12], device="cuda")
    keep = torch.tensor([True, False, True, True, True, False, True], device="cuda")
    entry_labels = torch.arange(7, device="cuda")
    feats, lbls = bank.contrast()
    torch.ops.pixcontrast.bank_write(feats, lbls, values, rows, keep, entry_labels)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        bank.update(emb, labels, backend="cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # The raw write against its definition.
    twin.load_state_dict(bank.state_dict())
    tf, tl = twin.contrast()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.ops.pixcontrast.bank_write(tf, tl, values, rows, keep, entry_labels)
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph):
        torch.ops.pixcontrast.bank_write(tf, tl, values, rows, keep, entry_labels)
    values.copy_(torch.randn(7, d, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    want_f, want_l = bank.contrast()
    want_f, want_l = want_f.clone(), want_l.clone()
    for e in range(7):
        if keep[e]:
            want_f[rows[e]] = values[e]
            want_l[rows[e]] = entry_labels[e]
    assert torch.equal(tf, want_f) and torch.equal(tl, want_l)


@pytest.mark.gpu
def test_gpu_bank_write_names_the_bad_argument():
    f = torch.zeros(10, 4, device="cuda")
    lab = torch.full((10,), IGNORE, device="cuda")
    v = torch.randn(3, 4, device="cuda")
    rows = torch.tensor([0, 1, 2], device="cuda")
    keep = torch.ones(3, dtype=torch.bool, device="cuda")
    write = torch.ops.pixcontrast.bank_write
    with pytest.raises(RuntimeError, match="values must have features' dtype"):
        write(f, lab, v.double(), rows, keep, rows)
    with pytest.raises(RuntimeError, match="keep must be Bool"):
        write(f, lab, v, rows, rows, rows)
    with pytest.raises(RuntimeError, match="entry_labels must be 1-D"):
        write(f, lab, v, rows, keep, rows[:2])
    with pytest.raises(RuntimeError, match="labels must be 1-D"):
        write(f, lab[:9], v, rows, keep, rows)
    with pytest.raises(RuntimeError, match="features must have contiguous rows"):
        write(torch.zeros(4, 10, device="cuda").t(), lab, v, rows, keep, rows)
    with pytest.raises(RuntimeError, match="rows must be a CUDA tensor"):
        write(f, lab, v, rows.cpu(), keep, rows)
    assert (lab == IGNORE).all() and (f == 0).all()
