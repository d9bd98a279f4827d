"""nn losses: the pixel contrast term and cross-entropy + contrast (docs/design.md §2).

``PixelContrastLoss`` turns a segmentation batch into the fused op's inputs: labels and
predictions at the embedding grid, segmentation-aware hard anchor sampling, then the
contrast against the batch itself or a class-keyed memory bank, which it then feeds with
the batch. ``ContrastCELoss`` adds it to the segmentation cross-entropy after a warm-up.
Every step is fixed-shape and free of host synchronisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixcontrast.infonce import BACKENDS as INFONCE_BACKENDS
from pixcontrast.infonce import fused_pixel_contrast
from pixcontrast.memory_bank import MemoryBank
from pixcontrast.mining import BACKENDS as MINING_BACKENDS
from pixcontrast.mining import check_mining_arguments
from pixcontrast.sampling import BACKENDS as SAMPLING_BACKENDS
from pixcontrast.sampling import sample_anchors

__all__ = ["PixelContrastLoss", "ContrastCELoss", "resize_labels"]


def resize_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-resize an integer map ``[B, H, W]`` to ``size`` (no interpolation of ids)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    # float64 holds any label id exactly (float32 would round ids above 2^24)
    out = F.interpolate(labels[:, None].to(torch.float64), size=size, mode="nearest")
    return out[:, 0].to(labels.dtype)


class PixelContrastLoss(nn.Module):
    """Pixel-wise contrastive loss of Wang et al. (ICCV 2021) on a segmentation batch.

    Args:
        temperature, base_temperature: τ and τ_b of the per-positive InfoNCE.
        max_samples, max_views: anchor sampling budget (see ``sample_anchors``).
        ignore_index: label of pixels that take no part.
        num_classes, dim: required with a memory bank (``memory_size > 0``).
        memory_size: per-class ring length of each bank queue (segment and pixel); 0 = no
            bank, contrast among the sampled anchors of the batch.
        pixels_per_update: pixel entries per (image, class) enqueued into the bank.
        include_anchors: with a bank, also contrast against the batch's other anchors.
        backend: the op's backend (``"auto"``, ``"cpu"``, ``"triton"``, ``"cuda"``,
            ``"torch"``/``"reference"``: the dense one). ``"torch"``, ``"triton"`` and
            ``"cuda"`` also select that backend for the anchor sampling and the bank update;
            ``"auto"`` and ``"cpu"`` leave those on ``"auto"`` (PyTorch on CPU; on CUDA the
            fastest measured: CUDA kernels for sampling, Triton for the bank write).
        memory_dtype: storage dtype of the bank (any MemoryBank dtype: float32,
            bfloat16, float16, float64).
        mining, num_negatives, num_positives, semi_hard_fraction: hard example mining
            among the contrast set (``None``, ``"hardest"``, ``"semi-hard"``; K per anchor,
            default 1024 negatives and 256 positives; the semi-hard pool's share). The
            semi-hard draw uses the ``generator`` given to ``forward``. docs/design.md §2.8.
        loss: ``"infonce"`` (the paper's per-positive InfoNCE) or ``"supcon"`` (SupCon's
            L_out; without mining on the InfoNCE kernels, every backend). Mining has its
            own backends: "cpu", "triton" and "torch" (dense); "auto" takes "cpu" on CPU
            tensors, "triton" on CUDA tensors.

    ``forward(embed [B, D, h, w], labels [B, H, W], predictions)`` where ``predictions`` is
    segmentation logits ``[B, K, h', w']`` or a class map ``[B, h', w']``; returns a scalar.
    An all-ignored batch (or one where no class has more than ``max_views`` pixels in any
    image) gives 0 with zero gradient.
    """

    def __init__(self, temperature: float = 0.1, base_temperature: float = 0.07,
                 max_samples: int = 1024, max_views: int = 100, ignore_index: int = -1,
                 num_classes: int | None = None, memory_size: int = 0,
                 pixels_per_update: int = 10, dim: int | None = None,
                 include_anchors: bool = False, backend: str = "auto",
                 memory_dtype: torch.dtype = torch.float32, mining: str | None = None,
                 num_negatives: int | None = None, num_positives: int | None = None,
                 semi_hard_fraction: float = 0.1, loss: str = "infonce"):
        super().__init__()
        check_mining_arguments(mining, num_negatives, num_positives, semi_hard_fraction,
                               None, loss, torch.device("cpu"))
        if (mining is not None or loss != "infonce") and backend != "auto":
            MINING_BACKENDS.validate_name(backend)
        self.mining, self.num_negatives, self.num_positives = mining, num_negatives, num_positives
        self.semi_hard_fraction, self.loss = semi_hard_fraction, loss
        if memory_size < 0:
            raise ValueError(f"memory_size must be ≥ 0, got {memory_size}")
        if memory_size > 0 and (num_classes is None or dim is None):
            raise ValueError("a memory bank (memory_size > 0) needs num_classes and dim, got "
                             f"num_classes={num_classes}, dim={dim}")
        self.temperature, self.base_temperature = temperature, base_temperature
        self.max_samples, self.max_views = max_samples, max_views
        self.ignore_index, self.include_anchors, self.backend = ignore_index, include_anchors, backend
        # Sampling and the bank update run the backend of the same name when they have one
        # (one vocabulary for every op: "torch", "triton", "cuda"); for "auto" and "cpu"
        # (the loss's C++ kernels; they have none) they choose their own.
        step = INFONCE_BACKENDS.aliases.get(backend, backend)
        self._step_backend = step if step in SAMPLING_BACKENDS.names else "auto"
        self.memory = (MemoryBank(num_classes, dim, size=memory_size,
                                  pixels_per_update=pixels_per_update,
                                  ignore_index=ignore_index, dtype=memory_dtype)
                       if memory_size > 0 else None)

    def _grid_targets(self, embed: Tensor, labels: Tensor, predictions: Tensor
                      ) -> tuple[Tensor, Tensor]:
        if embed.dim() != 4:
            raise ValueError(f"embed must be [B, D, h, w], got shape {tuple(embed.shape)}")
        b, _, h, w = embed.shape
        if labels.dim() != 3 or labels.shape[0] != b:
            raise ValueError(f"labels must be [B, H, W] with B={b}, got {tuple(labels.shape)}")
        if predictions.dim() == 4:
            if not predictions.is_floating_point():
                raise TypeError("4-D predictions must be segmentation logits [B, K, h, w], "
                                f"got dtype {predictions.dtype}")
            predictions = predictions.argmax(dim=1)
        elif predictions.dim() != 3 or predictions.is_floating_point():
            raise ValueError("predictions must be logits [B, K, h, w] or an integer class map "
                             f"[B, h, w], got {tuple(predictions.shape)} {predictions.dtype}")
        if predictions.shape[0] != b:
            raise ValueError(f"predictions have batch {predictions.shape[0]}, embed has {b}")
        return resize_labels(labels, (h, w)), resize_labels(predictions, (h, w))

    def forward(self, embed: Tensor, labels: Tensor, predictions: Tensor,
                generator: torch.Generator | None = None) -> Tensor:
        grid_labels, grid_pred = self._grid_targets(embed, labels, predictions)
        idx, anchor_labels = sample_anchors(
            grid_labels, grid_pred, max_samples=self.max_samples, max_views=self.max_views,
            ignore_index=self.ignore_index, generator=generator, backend=self._step_backend)
        # Unused rows (index -1) gather pixel 0 and carry ignore_index: they take no part.
        # The sampled rows are gathered from the [B, D, h·w] view: no copy of the whole map
        # (a [B·h·w, D] transpose would copy ~268 MB a step at B=8, 128×256, D=256 in fp32).
        hw = embed.shape[2] * embed.shape[3]
        flat = idx.clamp(min=0)
        anchors = embed.flatten(2)[flat // hw, :, flat % hw]          # [max_samples, D]
        bank, bank_labels = self.memory.contrast() if self.memory is not None else (None, None)
        loss = fused_pixel_contrast(
            anchors, anchor_labels, bank, bank_labels, temperature=self.temperature,
            base_temperature=self.base_temperature, ignore_index=self.ignore_index,
            include_anchors=self.include_anchors and bank is not None, backend=self.backend,
            mining=self.mining, num_negatives=self.num_negatives,
            num_positives=self.num_positives, semi_hard_fraction=self.semi_hard_fraction,
            generator=generator if self.mining == "semi-hard" else None, loss=self.loss)
        if self.memory is not None:
            self.update_memory(embed, grid_labels, generator=generator)
        return loss

    @torch.no_grad()
    def update_memory(self, embed: Tensor, labels: Tensor,
                      generator: torch.Generator | None = None) -> None:
        """Enqueue a batch into the bank (detached); labels at any resolution."""
        if self.memory is None:
            return
        self.memory.update(embed.detach(), resize_labels(labels, tuple(embed.shape[-2:])),
                           generator=generator, backend=self._step_backend)


class ContrastCELoss(nn.Module):
    """Segmentation cross-entropy (+ auxiliary head) + ``loss_weight`` × pixel contrast.

    ``forward(outputs, labels, iteration=None)`` with ``outputs`` a dict holding ``seg``
    (logits ``[B, K, h, w]``), optionally ``seg_aux`` (same) and ``embed``
    (``[B, D, h, w]``), and ``labels [B, H, W]``. The logits are upsampled bilinearly to the
    labels' size for the cross-entropy. Before ``warmup_iters`` the contrast term is not
    computed at all (a bank, if any, is still fed so it is full when the term starts).

    Returns ``(total, parts)``, ``parts`` holding detached ``ce``, ``aux``, ``contrast``
    scalars for logging (``contrast`` is 0 during warm-up).

    OHEM (``ohem=True``): keep the pixels whose true-class probability is at most
    ``max(ohem_thresh, p_k)``, ``p_k`` the ``ohem_min_kept``-th smallest such probability,
    so at least ``ohem_min_kept`` pixels count; no host synchronisation.
    """

    def __init__(self, num_classes: int, loss_weight: float = 0.1, warmup_iters: int = 5000,
                 aux_weight: float = 0.4, ce_weight: Tensor | list[float] | None = None,
                 ohem: bool = False, ohem_thresh: float = 0.7, ohem_min_kept: int = 100000,
                 ignore_index: int = -1, contrast: PixelContrastLoss | None = None):
        super().__init__()
        if ce_weight is not None:
            ce_weight = torch.as_tensor(ce_weight, dtype=torch.float32)
            if ce_weight.shape != (num_classes,):
                raise ValueError(f"ce_weight must have num_classes={num_classes} entries, "
                                 f"got shape {tuple(ce_weight.shape)}")
        self.register_buffer("ce_weight", ce_weight, persistent=False)
        self.num_classes, self.loss_weight, self.warmup_iters = num_classes, loss_weight, warmup_iters
        self.aux_weight, self.ohem, self.ignore_index = aux_weight, ohem, ignore_index
        self.ohem_thresh, self.ohem_min_kept = ohem_thresh, ohem_min_kept
        if contrast is not None and contrast.ignore_index != ignore_index:
            # The contrast term would take the other label for a class (and its bank's
            # never-written slots would count as one): one ignore_index for the whole loss.
            raise ValueError(f"ContrastCELoss: ignore_index={ignore_index} but its contrast "
                             f"module has ignore_index={contrast.ignore_index}; build "
                             f"PixelContrastLoss(ignore_index={ignore_index}, ...)")
        self.contrast = contrast if contrast is not None else PixelContrastLoss(
            ignore_index=ignore_index)

    def _ce(self, logits: Tensor, labels: Tensor) -> Tensor:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear",
                               align_corners=False)
        labels = labels.long()
        if not self.ohem:
            return F.cross_entropy(logits, labels, weight=self.ce_weight,
                                   ignore_index=self.ignore_index)
        pixel_ce = F.cross_entropy(logits, labels, weight=self.ce_weight,
                                   ignore_index=self.ignore_index, reduction="none").flatten()
        safe = torch.where(labels == self.ignore_index, 0, labels)  # any ignore id, e.g. 255
        valid = (labels != self.ignore_index).flatten()
        with torch.no_grad():
            prob = logits.float().softmax(dim=1).gather(1, safe[:, None]).flatten()
            prob = torch.where(valid, prob, 2.0)  # ignored pixels sort last, never kept
            ordered = prob.sort().values
            k = (valid.sum().clamp(max=self.ohem_min_kept) - 1).clamp(min=0)
            threshold = torch.maximum(ordered.gather(0, k[None])[0],
                                      prob.new_tensor(self.ohem_thresh))
            keep = valid & (prob <= threshold)
        if self.ce_weight is not None:
            w = self.ce_weight[safe.flatten()] * keep
            return (pixel_ce * keep).sum() / w.sum().clamp(min=1e-12)
        return (pixel_ce * keep).sum() / keep.sum().clamp(min=1)

    def forward(self, outputs: dict[str, Tensor], labels: Tensor,
                iteration: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if "seg" not in outputs:
            raise KeyError("outputs must hold 'seg' (segmentation logits [B, K, h, w])")
        seg = outputs["seg"]
        if seg.shape[1] != self.num_classes:
            raise ValueError(f"outputs['seg'] has {seg.shape[1]} channels, expected "
                             f"num_classes={self.num_classes}")
        ce = self._ce(seg, labels)
        total = ce
        zero = ce.new_zeros(())
        parts = {"ce": ce.detach(), "aux": zero, "contrast": zero}
        if self.aux_weight > 0 and outputs.get("seg_aux") is not None:
            aux = self._ce(outputs["seg_aux"], labels)
            total = total + self.aux_weight * aux
            parts["aux"] = aux.detach()
        embed = outputs.get("embed")
        if embed is not None and self.loss_weight > 0:
            if iteration is None or iteration >= self.warmup_iters:
                contrast = self.contrast(embed, labels, seg.detach())
                total = total + self.loss_weight * contrast.to(total.dtype)
                parts["contrast"] = contrast.detach()
            else:
                self.contrast.update_memory(embed, labels)
        parts["total"] = total.detach()
        return total, parts
