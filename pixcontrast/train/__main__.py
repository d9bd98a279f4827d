"""Train a segmentation model with ContrastCELoss.

    python -m pixcontrast.train --config configs/synthetic.yaml --output-dir runs/syn
    python -m pixcontrast.train --config CONFIG --resume runs/syn/checkpoints/last.pth
    python -m pixcontrast.train --config CONFIG --optim.lr 0.02 --loss.contrast false
    torchrun --nproc_per_node 2 -m pixcontrast.train --config CONFIG --output-dir DIR

Any ``--section.key value`` sets a config key (values parsed as YAML). Writes
``DIR/checkpoints/{last,best}.pth``, ``DIR/log.jsonl``, ``DIR/metrics.json`` (the final
validation) and TensorBoard events under ``DIR/tb``.

A bad config, a missing dataset, a missing, damaged or mismatched checkpoint or pretrained
file print ``error: …`` and exit with status 2 (no traceback); the config is checked when
it loads and the data before the model is built.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pixcontrast.train.config import CLI_ERRORS, load_config


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m pixcontrast.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    p.add_argument("--output-dir", default=None,
                   help="output folder (default: runs/<config name>)")
    p.add_argument("--resume", default=None, help="checkpoint to resume from "
                   "(use 'auto' for OUTPUT_DIR/checkpoints/last.pth if it exists)")
    return p.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    try:
        cfg = load_config(args.config, overrides)
    except CLI_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.output_dir or os.path.join(
        "runs", os.path.splitext(os.path.basename(args.config))[0])
    resume = args.resume
    if resume == "auto":
        last = os.path.join(out, "checkpoints", "last.pth")
        resume = last if os.path.isfile(last) else None

    from pixcontrast.train.loop import Trainer

    try:
        trainer = Trainer(cfg, out, resume=resume)
        metrics = trainer.run()
    except CLI_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if trainer.main:
        print(json.dumps({"mIoU": metrics["mIoU"], "pixel_acc": metrics["pixel_acc"],
                          "iteration": metrics["iteration"], "output_dir": out}))
    if trainer.world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
