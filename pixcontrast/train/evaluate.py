"""Evaluate a trainer checkpoint: confusion-matrix mIoU and pixel accuracy.

    python -m pixcontrast.evaluate --config CONFIG --checkpoint DIR/checkpoints/last.pth
    python -m pixcontrast.evaluate --config CONFIG --checkpoint CKPT --json out.json \
        --eval.mode slide --eval.scales [0.75,1.0,1.25] --eval.flip true

The model is rebuilt from ``--config`` (with ``--section.key value`` overrides); inference
follows its ``eval`` section: whole image or sliding window, optional multi-scale + flip.
``--json PATH`` writes ``{"mIoU", "pixel_acc", "per_class_iou", "iteration"}`` like the
trainer's metrics.json. The checkpoint's checksums are verified first: a damaged file is
refused naming the damaged entry. A bad config, a missing dataset, a missing, damaged or
mismatched checkpoint print ``error: …`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from torch.utils.data import DataLoader

from pixcontrast.train.config import CLI_ERRORS, load_config


def evaluate_checkpoint(cfg: dict, checkpoint: str, device: str | None = None,
                        progress: bool = False) -> dict:
    from pixcontrast.data import build_dataset
    from pixcontrast.models import CheckpointError, state_dict_mismatch
    from pixcontrast.train.builders import build_model_from_config, resolve_device
    from pixcontrast.train.checkpoint import load_checkpoint
    from pixcontrast.train.inference import evaluate_model

    dev = resolve_device(device or cfg["train"]["device"])
    d = cfg["data"]
    # the data first (a missing dataset is named before anything slow is read), then the
    # verified checkpoint; model.pretrained is not read (the checkpoint has every weight)
    ds = build_dataset(d, d["val_split"], train=False, seed=cfg["seed"])
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    model = build_model_from_config(cfg, pretrained=False)
    problems = state_dict_mismatch(model, ckpt["model"])
    if problems:
        raise CheckpointError(f"checkpoint {checkpoint} does not fit model "
                              f"'{cfg['model']['name']}' with this config: "
                              + "; ".join(problems))
    model.load_state_dict(ckpt["model"], strict=False)   # (checked just above)
    model.to(dev)
    loader = DataLoader(ds, batch_size=d["val_batch_size"], shuffle=False,
                        num_workers=d["num_workers"])
    metrics = evaluate_model(model, loader, d["num_classes"], d["ignore_index"], dev,
                             cfg["eval"], crop_size=d["crop_size"], progress=progress)
    metrics["iteration"] = int(ckpt.get("iteration", -1))
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pixcontrast.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config the model was trained with")
    p.add_argument("--checkpoint", required=True, help="trainer checkpoint (.pth)")
    p.add_argument("--json", default=None, help="write the metrics to this JSON file")
    p.add_argument("--device", default=None, help="cpu | cuda (default: train.device)")
    args, overrides = p.parse_known_args(argv)
    try:
        cfg = load_config(args.config, overrides)
        metrics = evaluate_checkpoint(cfg, args.checkpoint, args.device,
                                      progress=sys.stderr.isatty())
    except CLI_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = {k: metrics[k] for k in ("mIoU", "pixel_acc", "per_class_iou", "iteration")}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
