"""The reference trainer: YAML configs, builders, training loop, checkpoints, evaluation.

    python -m pixcontrast.train --config configs/synthetic.yaml --output-dir runs/syn
    python -m pixcontrast.evaluate --config runs/syn/config.yaml --checkpoint CKPT

=================  ======================================================================
``config``         defaults, YAML loading, ``--section.key value`` overrides, validation;
                   the ``loss`` section is derived from the loss modules' signatures
``builders``       device, model, loss, optimizer, LR schedule and data loaders from a config
``checkpoint``     atomic save, verified load, RNG states, checksums
``loop``           :class:`Trainer`: the training loop, validation, logs, exact resume
``distributed``    torchrun init, resumable / sharded samplers, CPU SyncBatchNorm
``inference``      whole-image, sliding-window, multi-scale + flip prediction; evaluation
``metrics``        confusion-matrix mIoU, per-class IoU, pixel accuracy
``evaluate``       the evaluation CLI (``python -m pixcontrast.evaluate``)
``__main__``       the training CLI (``python -m pixcontrast.train``)
=================  ======================================================================

The library core (``pixcontrast.ops``, ``losses``, ``memory_bank``, ``sampling``,
``infonce``, ``models``) never imports from here. The two CLIs are not imported by this
``__init__`` (``python -m`` runs them as ``__main__``).
"""

from pixcontrast.train.builders import (build_criterion, build_loaders, build_model_from_config,
                                        build_optimizer, build_scheduler, poly_lr_lambda,
                                        resolve_device, split_head_parameters)
from pixcontrast.train.checkpoint import CHECKPOINT_KEYS, load_checkpoint, save_checkpoint
from pixcontrast.train.config import DEFAULTS, ConfigError, load_config
from pixcontrast.train.inference import evaluate_model, predict
from pixcontrast.train.loop import Trainer
from pixcontrast.train.metrics import ConfusionMatrix

__all__ = ["Trainer", "load_config", "ConfigError", "DEFAULTS", "build_model_from_config",
           "build_criterion", "build_optimizer", "build_scheduler", "build_loaders",
           "poly_lr_lambda", "split_head_parameters", "resolve_device", "CHECKPOINT_KEYS",
           "load_checkpoint", "save_checkpoint", "evaluate_model", "predict",
           "ConfusionMatrix"]
