"""The training loop of the reference trainer (``python -m pixcontrast.train``).

One :class:`Trainer` owns the model, ``ContrastCELoss`` (with its memory bank), SGD with a
poly LR (optional linear warm-up, a multiplier for the heads), optional AMP and gradient
clipping, periodic validation, checkpoints and logs. What it holds is built from the config
by :mod:`pixcontrast.train.builders`; checkpoints are written and read by
:mod:`pixcontrast.train.checkpoint`.

Exact resume: a checkpoint holds the model, optimizer, scheduler, grad scaler, loss state
(the memory bank), every rank's RNG states (torch, CUDA, numpy, random) and the iteration.
Data order is a pure function of (seed, epoch): the sampler's permutation is seeded per
epoch and each sample's augmentation RNG by (seed, epoch, index), so the data position is
recomputed from the iteration (no loader state to save). On CPU with ``num_workers=0`` a
run of 2k iterations and a run of 1k resumed to 2k give identical weights.

Start-up order: the data (a missing dataset is the first error), then the resumed
checkpoint (read and verified against its checksums; a damaged or mismatched one raises
``CheckpointError``), then the model (``model.pretrained`` is read only for a fresh run:
a resumed checkpoint holds every weight), the loss and a check that ``loss.backend`` runs
on this device. The progress bar (``train.progress``) is drawn only when stderr is a
terminal.

Output directory::

    checkpoints/last.pth   checkpoints/best.pth   log.jsonl   metrics.json   config.yaml   tb/
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel

from pixcontrast.train.builders import (build_criterion, build_loaders, build_model_from_config,
                                        build_optimizer, build_scheduler, resolve_device)
from pixcontrast.models import state_dict_mismatch
from pixcontrast.train.checkpoint import (CheckpointError, digest, load_checkpoint, rng_state,
                                          save_checkpoint, set_rng_state)
from pixcontrast.train.config import ConfigError
from pixcontrast.train.distributed import barrier, convert_cpu_sync_batchnorm, init_distributed
from pixcontrast.train.inference import evaluate_model

__all__ = ["Trainer"]


class _JsonlLog:
    def __init__(self, path: str, truncate_after: int | None) -> None:
        self.path = path
        if truncate_after is not None and os.path.isfile(path):
            # a resumed run rewrites what came after its checkpoint
            with open(path) as f:
                keep = [line for line in f if line.strip()
                        and json.loads(line).get("iteration", 0) <= truncate_after]
            with open(path, "w") as f:
                f.writelines(keep)
        elif truncate_after is None and os.path.isfile(path):
            os.remove(path)

    def write(self, record: Mapping[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class Trainer:
    """Build everything from a config and train (``run()``); see the module doc."""

    def __init__(self, cfg: Mapping[str, Any], output_dir: str, resume: str | None = None
                 ) -> None:
        self.cfg = cfg
        self.out = output_dir
        t = cfg["train"]
        kind = "cuda" if t["device"] == "cuda" or (t["device"] == "auto"
                                                   and torch.cuda.is_available()) else "cpu"
        self.rank, self.world, local_rank = init_distributed(kind)
        self.device = resolve_device(t["device"], local_rank)
        self.main = self.rank == 0
        if t["deterministic"]:
            torch.use_deterministic_algorithms(True)
        seed = cfg["seed"]

        # data first: a missing dataset is reported before anything slow (the model, the
        # pretrained file) is built. Per-rank batch, seeded permutation per epoch,
        # per-sample augmentation RNG.
        data = build_loaders(cfg, self.rank, self.world,
                             pin_memory=self.device.type == "cuda")
        self.train_set, self.val_set, self.sampler = data.train_set, data.val_set, data.sampler
        self.train_loader, self.val_loader = data.train_loader, data.val_loader
        self.iters_per_epoch = data.iters_per_epoch
        # a resumed checkpoint is read and verified before the model is built; it holds
        # every weight, so model.pretrained is not read then
        ckpt = load_checkpoint(resume, map_location="cpu") if resume else None

        # model: identical initial weights on every rank (DDP also broadcasts rank 0's)
        torch.manual_seed(seed)
        model = build_model_from_config(cfg, pretrained=ckpt is None)
        if self.world > 1 and cfg["model"]["sync_bn"]:
            if self.device.type == "cuda":
                from pixcontrast.models import convert_sync_batchnorm

                model = convert_sync_batchnorm(model)
            else:
                model = convert_cpu_sync_batchnorm(model)
        self.model = model.to(self.device)
        self.criterion = build_criterion(cfg).to(self.device)
        self._check_loss_backend()

        self.optimizer = build_optimizer(self.model, cfg)
        self.total = t["iterations"]
        self.scheduler = build_scheduler(self.optimizer, cfg)
        amp = t["amp"] or None
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")

        if self.world > 1:
            # the projection head gets no gradient during the contrast warm-up (and none
            # at all with the contrast off): let DDP tolerate unused parameters
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                else None, find_unused_parameters=True)
        else:
            self.ddp = self.model

        self.start_iter = 0
        self.best_miou = -1.0
        if ckpt is not None:
            self._load(ckpt, resume)
        else:
            # per-rank training randomness (anchor sampling, bank pixel picks)
            torch.manual_seed(seed + 1000 * self.rank)
            np.random.seed(seed + 1000 * self.rank)
            random.seed(seed + 1000 * self.rank)

        self.log = self.writer = None
        if self.main:
            os.makedirs(os.path.join(self.out, "checkpoints"), exist_ok=True)
            with open(os.path.join(self.out, "config.yaml"), "w") as f:
                yaml.safe_dump(dict(cfg), f, sort_keys=False)
            self.log = _JsonlLog(os.path.join(self.out, "log.jsonl"),
                                 self.start_iter if resume else None)
            if t["tensorboard"]:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.writer = SummaryWriter(os.path.join(self.out, "tb"),
                                                purge_step=self.start_iter or None)
                except ImportError:
                    print("tensorboard is not installed: logging to log.jsonl only")

    # ------------------------------------------------------------------------------------

    def state_dict(self, iteration: int) -> dict:
        states = [None] * self.world
        mine = rng_state()
        if self.world > 1:
            torch.distributed.all_gather_object(states, mine)
        else:
            states = [mine]
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "criterion": self.criterion.state_dict(), "rng": states,
                "iteration": iteration, "config": dict(self.cfg), "best_miou": self.best_miou,
                "world_size": self.world, "bank_checksums": self._bank_checksums(),
                "model_checksums": self._gather(digest(self.model.state_dict().values()))}

    def _bank_checksums(self) -> list[str]:
        """SHA-256 of the memory bank's buffers on every rank (all equal under DDP)."""
        bank = self.criterion.contrast.memory
        return self._gather(digest((bank.features, bank.labels, bank.pointers))
                            if bank is not None else "")

    def _gather(self, obj: Any) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def _check_loss_backend(self) -> None:
        """``loss.backend`` must run on this device: checked now, not at the first contrast
        step after the warm-up."""
        con = self.criterion.contrast
        if not (self.cfg["loss"]["contrast"] and self.criterion.loss_weight > 0):
            return
        from pixcontrast.infonce import BACKENDS

        dim = self.cfg["model"]["proj_dim"]
        bank = con.memory.features if con.memory is not None else None
        dtype = bank.dtype if bank is not None else (
            {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg["train"]["amp"],
                                                                  torch.float32))
        anchors = torch.zeros(2, dim, dtype=dtype, device=self.device)
        contrast = anchors if bank is not None else None
        try:
            BACKENDS.choose(con.backend, self.device, anchors, contrast)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"config key 'loss.backend' is {con.backend!r}, which cannot run "
                              f"here: {exc}") from None

    def _load(self, ckpt: dict, path: str) -> None:
        """Restore a verified checkpoint; a part that does not fit this config raises
        ``CheckpointError`` naming ``path`` and the part."""
        problems = state_dict_mismatch(self.model, ckpt["model"])
        if problems:
            raise CheckpointError(f"checkpoint {path} does not fit model "
                                  f"'{self.cfg['model']['name']}' with this config: "
                                  + "; ".join(problems))
        self.model.load_state_dict(ckpt["model"], strict=False)   # (checked just above)
        for name, obj in (("optimizer", self.optimizer), ("scheduler", self.scheduler),
                          ("scaler", self.scaler)):
            try:
                obj.load_state_dict(ckpt[name])
            except (KeyError, RuntimeError, ValueError, TypeError) as exc:
                raise CheckpointError(f"checkpoint {path}: its {name} state does not fit "
                                      f"this config: {str(exc).strip()}") from None
        problems = state_dict_mismatch(self.criterion, ckpt["criterion"])
        if problems:
            raise CheckpointError(f"checkpoint {path}: loss state does not match this config "
                                  f"(memory bank on/off or size changed?): "
                                  + "; ".join(problems))
        self.criterion.load_state_dict(ckpt["criterion"], strict=False)
        self.start_iter = int(ckpt["iteration"])
        self.best_miou = float(ckpt.get("best_miou", -1.0))
        rng = ckpt["rng"]
        if len(rng) != self.world:
            print(f"checkpoint {path} was saved by {len(rng)} process(es), this run has "
                  f"{self.world}: RNG streams are re-seeded, the run is not bit-exact")
            torch.manual_seed(self.cfg["seed"] + 1000 * self.rank + self.start_iter)
        else:
            set_rng_state(rng[self.rank])
        if self.start_iter >= self.total:
            print(f"checkpoint {path} is at iteration {self.start_iter} ≥ "
                  f"train.iterations={self.total}: nothing to train")

    def save(self, name: str, iteration: int) -> None:
        state = self.state_dict(iteration)       # collective under DDP: every rank
        if self.main:
            save_checkpoint(state, os.path.join(self.out, "checkpoints", name))

    # ------------------------------------------------------------------------------------

    def _batches(self, start: int):
        """Training batches from iteration ``start`` on, across epochs."""
        epoch, offset = divmod(start, self.iters_per_epoch)
        bs = self.cfg["data"]["batch_size"]
        while True:
            self.sampler.set_epoch(epoch)
            self.sampler.skip = offset * bs
            self.train_set.set_epoch(epoch)
            yield from self.train_loader
            epoch, offset = epoch + 1, 0

    def validate(self, iteration: int) -> dict:
        e = self.cfg["eval"]
        metrics = evaluate_model(self.model, self.val_loader, self.cfg["data"]["num_classes"],
                                 self.cfg["data"]["ignore_index"], self.device, e,
                                 crop_size=self.cfg["data"]["crop_size"])
        metrics["iteration"] = iteration
        return metrics

    def _log(self, record: dict) -> None:
        if not self.main:
            return
        # strict JSON: a skipped fp16 step's inf grad norm is written as null
        self.log.write({k: None if isinstance(v, float) and not math.isfinite(v) else v
                        for k, v in record.items()})
        if self.writer is not None:
            it = record["iteration"]
            for k, v in record.items():
                if (k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool)
                        and math.isfinite(v)):
                    self.writer.add_scalar(k.replace(".", "/"), v, it)

    def step(self, images: torch.Tensor, labels: torch.Tensor, it: int) -> dict:
        """One optimisation step at iteration ``it`` (0-based); returns float loss parts."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype,
                            enabled=self.amp_dtype is not None):
            outputs = self.ddp(images)
        outputs = {k: v.float() if k != "embed" else v for k, v in outputs.items()}
        total, parts = self.criterion(outputs, labels, iteration=it)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        clip = self.cfg["optim"]["grad_clip"]
        grad_norm = None
        if clip:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        out = {k: float(v) for k, v in parts.items()}
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        return out

    def run(self, stop_at: int | None = None) -> dict | None:
        """Train from ``start_iter`` to ``train.iterations``; returns the final metrics.

        ``stop_at``: stop after that iteration (saving ``last.pth``) as if interrupted;
        the schedule still runs to ``train.iterations`` when resumed.
        """
        t = self.cfg["train"]
        end = self.total if stop_at is None else min(stop_at, self.total)
        log_every = max(1, t["log_interval"])
        val_every = t["val_interval"] or self.total
        ckpt_every = t["checkpoint_interval"] or self.total
        self.model.train()
        bar = None
        if self.main and t["progress"]:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (a redirected log gets
            # no line per update; the validation lines below are still printed)
            bar = tqdm(total=self.total, initial=self.start_iter, dynamic_ncols=True,
                       desc="train", disable=None)
        metrics = None
        sums: dict[str, float] = {}
        n = 0
        t0 = time.time()
        batches = self._batches(self.start_iter)
        for it in range(self.start_iter, end):
            images, labels = next(batches)
            parts = self.step(images, labels, it)
            # (grad_norm may be inf under fp16: the grad scaler then skips the step)
            if not all(math.isfinite(v) for k, v in parts.items() if k != "grad_norm"):
                raise FloatingPointError(f"non-finite loss at iteration {it}: {parts}")
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            done = it + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ce=f"{parts['ce']:.3f}", con=f"{parts['contrast']:.3f}")
            if done % log_every == 0 or done == self.total:
                lrs = self.scheduler.get_last_lr()
                rec = {"iteration": done, "lr": lrs[0], "lr_head": lrs[-1],
                       **{k: v / n for k, v in sums.items()},
                       "time": round(time.time() - t0, 3)}
                self._log(rec)
                sums, n = {}, 0
            if done % val_every == 0 or done == self.total:
                metrics = self.validate(done)
                improved = metrics["mIoU"] > self.best_miou
                self.best_miou = max(self.best_miou, metrics["mIoU"])
                self._log({"iteration": done, "val.mIoU": metrics["mIoU"],
                           "val.pixel_acc": metrics["pixel_acc"]})
                if bar is not None:
                    bar.write(f"iteration {done}: mIoU {metrics['mIoU']:.4f} "
                              f"pixel acc {metrics['pixel_acc']:.4f}")
                if improved:
                    self.save("best.pth", done)
            if done % ckpt_every == 0 or done == self.total or done == end:
                self.save("last.pth", done)
        if bar is not None:
            bar.close()
        if end < self.total:
            barrier()
            return None
        if metrics is None:                      # resumed at or past the end
            metrics = self.validate(self.start_iter)
        if self.main:
            with open(os.path.join(self.out, "metrics.json"), "w") as f:
                json.dump({k: metrics[k] for k in ("mIoU", "pixel_acc", "per_class_iou",
                                                   "iteration")}, f, indent=1)
            if self.writer is not None:
                self.writer.close()
        barrier()
        return metrics
