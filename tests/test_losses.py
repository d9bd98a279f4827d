"""PixelContrastLoss and ContrastCELoss against direct computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pixcontrast.losses import ContrastCELoss, PixelContrastLoss, resize_labels
from pixcontrast.infonce import pixel_contrast_reference
from pixcontrast.mining import mining_reference
from pixcontrast.sampling import sample_anchors

IGN = 255


def blobs(b=2, h=16, w=20, classes=4, scale=1):
    """Label maps of vertical class stripes (so every class has many pixels) + some ignore."""
    cols = torch.randint(0, classes, (b, 1, w)).expand(b, h, w).clone()
    cols[torch.rand(b, h, w) < 0.05] = IGN
    if scale > 1:
        cols = cols.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return cols


def embed_for(labels, d=12, classes=4):
    centers = torch.randn(classes + 1, d)
    e = centers[labels.clamp(max=classes)] + 0.7 * torch.randn(*labels.shape, d)
    return e.permute(0, 3, 1, 2).contiguous().requires_grad_()


def generator(seed):
    return torch.Generator().manual_seed(seed)


def test_pixel_contrast_without_bank_matches_direct_computation(fresh_seed):
    labels = blobs(scale=2)                      # [2, 32, 40]: labels at 2× the grid
    grid = labels[:, ::2, ::2]
    embed = embed_for(grid)
    logits = torch.randn(2, 4, 16, 20)
    loss_fn = PixelContrastLoss(max_samples=64, max_views=10, ignore_index=IGN,
                                backend="cpu")
    loss = loss_fn(embed, labels, logits, generator=generator(fresh_seed))
    loss.backward()

    idx, y = sample_anchors(grid, logits.argmax(1), max_samples=64, max_views=10,
                            ignore_index=IGN, generator=generator(fresh_seed))
    e64 = embed.detach().double().requires_grad_()
    feats = e64.permute(0, 2, 3, 1).reshape(-1, 12)[idx.clamp(min=0)]
    ref = pixel_contrast_reference(feats, y, ignore_index=IGN)
    ref.backward()
    assert (y != IGN).sum() > 0
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embed.grad.double(), e64.grad, rtol=1e-4, atol=1e-7)


def test_predictions_as_logits_or_class_map_at_any_size(fresh_seed):
    labels = blobs(h=16, w=20)
    embed = embed_for(labels)
    logits = torch.randn(2, 4, 32, 40)
    class_map = resize_labels(logits.argmax(1), (16, 20))
    loss_fn = PixelContrastLoss(max_samples=48, max_views=8, ignore_index=IGN, backend="cpu")
    a = loss_fn(embed, labels, logits, generator=generator(fresh_seed))
    b = loss_fn(embed, labels, class_map, generator=generator(fresh_seed))
    assert torch.equal(a, b) and a > 0


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_explicit_gpu_backend_drives_the_whole_step(fresh_seed, backend, monkeypatch):
    """backend="triton"/"cuda" is used for sampling and the bank update too, not only the
    op: on CPU tensors (no interpreter) the sampler is the first to refuse, naming why."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    labels = blobs(h=16, w=20)
    embed = embed_for(labels)
    loss_fn = PixelContrastLoss(max_samples=48, max_views=8, ignore_index=IGN, num_classes=4,
                                memory_size=20, dim=embed.shape[1], backend=backend)
    with pytest.raises(RuntimeError, match=f"sample_anchors.*{backend}"):
        loss_fn(embed, labels, torch.randn(2, 4, 16, 20))


def test_all_ignored_batch_gives_zero(fresh_seed):
    labels = torch.full((2, 8, 8), IGN)
    embed = embed_for(labels.clamp(max=3))
    loss_fn = PixelContrastLoss(max_samples=32, max_views=4, ignore_index=IGN, backend="cpu")
    loss = loss_fn(embed, labels, torch.randn(2, 4, 8, 8))
    loss.backward()
    assert loss.item() == 0.0 and (embed.grad == 0).all()


def test_bank_contrast_then_enqueue(fresh_seed):
    loss_fn = PixelContrastLoss(max_samples=64, max_views=10, ignore_index=IGN, num_classes=4,
                                memory_size=50, pixels_per_update=5, dim=12, backend="cpu")
    labels = blobs()
    embed = embed_for(labels)
    logits = torch.randn(2, 4, 16, 20)
    # empty bank: every slot ignore_index, no positives, loss exactly 0
    first = loss_fn(embed, labels, logits, generator=generator(fresh_seed))
    assert first.item() == 0.0
    feats, bank_labels = loss_fn.memory.contrast()
    assert (bank_labels != IGN).any() and not feats.requires_grad
    # now the loss is the fused loss of the sampled anchors against that bank
    snapshot = feats.clone(), bank_labels.clone()
    second = loss_fn(embed, labels, logits, generator=generator(fresh_seed))
    second.backward()
    idx, y = sample_anchors(labels, logits.argmax(1), max_samples=64, max_views=10,
                            ignore_index=IGN, generator=generator(fresh_seed))
    anchors = embed.detach().double().permute(0, 2, 3, 1).reshape(-1, 12)[idx.clamp(min=0)]
    ref = pixel_contrast_reference(anchors, y, snapshot[0].double(), snapshot[1],
                                   ignore_index=IGN)
    torch.testing.assert_close(second.double(), ref, rtol=1e-5, atol=1e-6)
    assert embed.grad is not None and embed.grad.abs().sum() > 0


@pytest.mark.parametrize("mining, loss", [
    ("hardest", "infonce"), ("semi-hard", "infonce"), ("semi-hard", "supcon"), (None, "supcon")])
def test_mining_and_supcon_against_the_bank(fresh_seed, mining, loss):
    """The module's mining/SupCon term is the dense reference's on the sampled anchors and
    the bank, with the semi-hard draw taken from the forward's generator after sampling."""
    kw = dict(num_negatives=6, num_positives=3) if mining else {}
    loss_fn = PixelContrastLoss(max_samples=64, max_views=10, ignore_index=IGN, num_classes=4,
                                memory_size=50, pixels_per_update=5, dim=12, backend="cpu",
                                mining=mining, loss=loss, **kw)
    labels = blobs()
    embed = embed_for(labels)
    logits = torch.randn(2, 4, 16, 20)
    loss_fn(embed, labels, logits, generator=generator(fresh_seed))
    snapshot = tuple(t.clone() for t in loss_fn.memory.contrast())
    second = loss_fn(embed, labels, logits, generator=generator(fresh_seed))
    (grad,) = torch.autograd.grad(second, [embed])
    g = generator(fresh_seed)
    idx, y = sample_anchors(labels, logits.argmax(1), max_samples=64, max_views=10,
                            ignore_index=IGN, generator=g)
    u = torch.rand((64, 9), dtype=torch.float64, generator=g) if mining == "semi-hard" else None
    e64 = embed.detach().double().requires_grad_()
    anchors = e64.permute(0, 2, 3, 1).reshape(-1, 12)[idx.clamp(min=0)]
    ref = mining_reference(anchors, y, snapshot[0].double(), snapshot[1], ignore_index=IGN,
                           mining=mining, loss=loss, u=u, **kw)
    (ref_grad,) = torch.autograd.grad(ref, [e64])
    assert ref.item() != 0
    torch.testing.assert_close(second.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mining="hard"), "mining must be one of"),
    (dict(loss="triplet"), "loss must be one of"),
    (dict(num_negatives=8), "need mining"),
    (dict(mining="semi-hard", semi_hard_fraction=2.0), "semi_hard_fraction"),
    (dict(mining="hardest", backend="gpu"), "backend must be"),
])
def test_mining_arguments_checked_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PixelContrastLoss(**kwargs)


def test_bank_needs_num_classes_and_dim():
    with pytest.raises(ValueError, match="needs num_classes and dim"):
        PixelContrastLoss(memory_size=10)


def seg_outputs(b=2, k=4, h=8, w=10, d=12, aux=True, embed=True):
    out = {"seg": torch.randn(b, k, h, w, requires_grad=True)}
    if aux:
        out["seg_aux"] = torch.randn(b, k, h, w, requires_grad=True)
    if embed:
        out["embed"] = torch.randn(b, d, h, w, requires_grad=True)
    return out


def test_one_ignore_index_for_the_whole_loss():
    """A contrast module with another ignore_index would take the CE's ignored label for a
    class (and its bank's never-written slots with it): refused, naming both."""
    with pytest.raises(ValueError, match="ignore_index=255 but its contrast module has "
                                         "ignore_index=-1"):
        ContrastCELoss(num_classes=3, ignore_index=255, contrast=PixelContrastLoss())
    loss = ContrastCELoss(num_classes=3, ignore_index=255,
                          contrast=PixelContrastLoss(ignore_index=255, num_classes=3, dim=4,
                                                     memory_size=5))
    assert loss.contrast.memory.ignore_index == 255
    assert ContrastCELoss(num_classes=3, ignore_index=255).contrast.ignore_index == 255

def test_ce_aux_and_contrast_after_warmup(fresh_seed):
    labels = blobs(h=16, w=20)
    out = seg_outputs()
    contrast = PixelContrastLoss(max_samples=32, max_views=4, ignore_index=IGN, backend="cpu")
    loss_fn = ContrastCELoss(4, loss_weight=0.1, warmup_iters=10, aux_weight=0.4,
                             ignore_index=IGN, contrast=contrast)
    total, parts = loss_fn(out, labels, iteration=10)
    up = lambda x: F.interpolate(x, size=(16, 20), mode="bilinear", align_corners=False)
    ce = F.cross_entropy(up(out["seg"]), labels, ignore_index=IGN)
    aux = F.cross_entropy(up(out["seg_aux"]), labels, ignore_index=IGN)
    torch.testing.assert_close(parts["ce"], ce.detach())
    torch.testing.assert_close(parts["aux"], aux.detach())
    assert parts["contrast"] > 0
    torch.testing.assert_close(total, ce + 0.4 * aux + 0.1 * parts["contrast"])
    total.backward()
    assert out["embed"].grad.abs().sum() > 0


def test_contrast_not_computed_during_warmup(monkeypatch):
    labels = blobs(h=16, w=20)
    out = seg_outputs()
    loss_fn = ContrastCELoss(4, warmup_iters=10, ignore_index=IGN,
                             contrast=PixelContrastLoss(ignore_index=IGN, backend="cpu"))

    def boom(*a, **k):
        raise AssertionError("contrast computed during warm-up")

    monkeypatch.setattr(loss_fn.contrast, "forward", boom)
    total, parts = loss_fn(out, labels, iteration=9)
    assert parts["contrast"].item() == 0.0
    total.backward()
    assert out["embed"].grad is None


def test_warmup_still_fills_the_bank():
    contrast = PixelContrastLoss(ignore_index=IGN, num_classes=4, memory_size=20, dim=12,
                                 backend="cpu")
    loss_fn = ContrastCELoss(4, warmup_iters=10, ignore_index=IGN, contrast=contrast)
    loss_fn(seg_outputs(), blobs(h=16, w=20), iteration=0)
    assert (contrast.memory.contrast()[1] != IGN).any()


def literal_ohem(logits, labels, thresh, min_kept):
    prob = logits.softmax(1)
    ce = F.cross_entropy(logits, labels, ignore_index=IGN, reduction="none")
    vals = [(prob[b, labels[b, i, j], i, j].item(), ce[b, i, j].item())
            for b in range(labels.shape[0]) for i in range(labels.shape[1])
            for j in range(labels.shape[2]) if labels[b, i, j] != IGN]
    ps = sorted(p for p, _ in vals)
    t = max(thresh, ps[min(min_kept, len(ps)) - 1])
    kept = [c for p, c in vals if p <= t]
    return sum(kept) / len(kept)


@pytest.mark.parametrize("min_kept", [5, 50, 10_000])
def test_ohem_matches_literal_definition(min_kept):
    labels = blobs(h=8, w=10)
    out = seg_outputs(aux=False, embed=False)
    loss_fn = ContrastCELoss(4, ohem=True, ohem_thresh=0.3, ohem_min_kept=min_kept,
                             ignore_index=IGN)
    total, _ = loss_fn(out, labels)
    assert total.item() == pytest.approx(literal_ohem(out["seg"].detach(), labels, 0.3,
                                                      min_kept), rel=1e-5)


def test_class_weights():
    labels = blobs(h=8, w=10)
    out = seg_outputs(aux=False, embed=False)
    w = torch.rand(4) + 0.5
    total, _ = ContrastCELoss(4, ce_weight=w, ignore_index=IGN)(out, labels)
    ref = F.cross_entropy(out["seg"], labels, weight=w, ignore_index=IGN)
    torch.testing.assert_close(total, ref)
    with pytest.raises(ValueError, match="ce_weight must have num_classes=4"):
        ContrastCELoss(4, ce_weight=[1.0, 2.0])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "triton", "cuda"])
def test_whole_step_is_sync_free_and_graph_capturable(backend):
    """Sample, contrast against the bank, backward, enqueue: no host sync, one CUDA graph."""
    dev = "cuda"
    b, d, h, w, k = 4, 64, 32, 64, 19
    loss_fn = PixelContrastLoss(max_samples=256, max_views=20, ignore_index=IGN,
                                num_classes=k, memory_size=200, dim=d,
                                backend=backend).to(dev)
    labels = blobs(b, h, w, classes=k).to(dev)
    static_embed = torch.randn(b, d, h, w, device=dev, requires_grad=True)
    static_logits = torch.randn(b, k, h, w, device=dev)
    g = torch.Generator(device=dev).manual_seed(0)

    def step():
        static_embed.grad = None
        loss = loss_fn(static_embed, labels, static_logits, generator=g)
        loss.backward()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up: Triton compilation and allocator pools
            step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()

    torch.cuda.set_sync_debug_mode("error")
    try:
        step()  # eager, any host synchronisation raises
        graph = torch.cuda.CUDAGraph()
        # A non-default generator must be registered before capture, so that each replay
        # advances its Philox offset (without it: "Attempt to increase offset for a CUDA
        # generator not in capture mode", seen on the H200 of 2026-11-30).
        graph.register_generator_state(g)
        with torch.cuda.graph(graph):
            static_loss = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")

    pointers_before = loss_fn.memory.pointers.clone()
    with torch.no_grad():
        static_embed.copy_(torch.randn_like(static_embed))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(static_loss) and static_loss > 0
    assert torch.isfinite(static_embed.grad).all() and static_embed.grad.abs().sum() > 0
    assert not torch.equal(loss_fn.memory.pointers, pointers_before)  # the replay enqueued
