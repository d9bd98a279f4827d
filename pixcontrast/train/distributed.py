"""torch.distributed helpers of the trainer: init from torchrun's environment, samplers,
and a SyncBatchNorm that also works on CPU (gloo).

``torch.nn.SyncBatchNorm`` refuses CPU tensors, so on CPU the trainer converts BatchNorm
layers to :class:`CPUSyncBatchNorm`, which all-reduces the per-channel sums and sums of
squares (autograd flows through ``torch.distributed.nn.all_reduce``). On GPU it uses the
models' ``convert_sync_batchnorm`` (torch's SyncBatchNorm).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, Sampler

__all__ = ["init_distributed", "is_main", "rank_world", "ResumableSampler", "ShardSampler",
           "CPUSyncBatchNorm", "convert_cpu_sync_batchnorm", "barrier"]


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def init_distributed(device_kind: str) -> tuple[int, int, int]:
    """Initialise the default process group when launched by torchrun (``WORLD_SIZE`` > 1).

    Backend: NCCL for CUDA, gloo for CPU. Returns ``(rank, world_size, local_rank)``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        r, w = rank_world()
        return r, w, int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (seeded permutation per epoch, rank slice) that can start an
    epoch part-way: ``skip`` first indices of this rank's share are dropped, so a resumed
    run draws exactly the batches an uninterrupted one would."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int,
                 shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=True)
        self.skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return super().__len__() - self.skip


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, …`` in order: every sample exactly once over all ranks
    (no padding duplicates, so an all-reduced confusion matrix is exact)."""

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.length, self.rank, self.world = length, rank, world

    def __iter__(self):
        return iter(range(self.rank, self.length, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world))


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of each rank's input is the sum of all ranks' output
    gradients (every rank's loss depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed over all ranks (any device).

    Same parameters and buffers as ``nn.BatchNorm2d`` (checkpoints interchange); outside
    training or without a process group it is plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, world = rank_world()
        if not self.training or world == 1:
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        n = torch.tensor([x.numel() / c], dtype=torch.float32, device=x.device)
        stats = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), n])
        stats = _AllReduceSum.apply(stats)
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c:2 * c] / total - mean * mean).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else \
                    1.0 / float(self.num_batches_tracked)
                unbiased = var * total / (total - 1).clamp(min=1)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * unbiased.detach())
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_cpu_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` (not already synchronised) by :class:`CPUSyncBatchNorm`,
    keeping its parameters and statistics."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(
            module, (CPUSyncBatchNorm, nn.SyncBatchNorm)):
        new = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = convert_cpu_sync_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
