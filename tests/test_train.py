"""The trainer wing (pixcontrast.train): exact resume, CLI outputs, evaluate, the loss built
from the config, the core's independence from the wing, 2-process gloo run.

All runs use a tiny synthetic config (32×32 scenes, hrnet_tiny, a few iterations,
num_workers 0) so the whole file takes well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from pixcontrast.losses import ContrastCELoss, PixelContrastLoss
from pixcontrast.train import (CHECKPOINT_KEYS, Trainer, build_criterion, load_checkpoint,
                               poly_lr_lambda, split_head_parameters)
from pixcontrast.train.config import load_config

ROOT = os.path.join(os.path.dirname(__file__), "..")
SYNTHETIC = os.path.join(ROOT, "configs", "synthetic.yaml")
TINY = {
    "data.image_size": 32, "data.crop_size": [32, 32], "data.batch_size": 4,
    "data.num_train": 16, "data.num_val": 6, "data.val_batch_size": 3,
    "data.num_workers": 0, "model.proj_dim": 16, "loss.warmup_iters": 2,
    "loss.memory_size": 12, "loss.max_views": 6, "loss.max_samples": 64,
    "train.iterations": 6, "train.val_interval": 3, "train.checkpoint_interval": 3,
    "train.log_interval": 1, "train.progress": False, "train.tensorboard": False,
}


def tiny_cfg(**extra):
    return load_config(SYNTHETIC, {**TINY, **extra})


def _bank(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("contrast.memory.")}


def test_resume_is_exact(tmp_path):
    """6 iterations straight = 3 iterations, checkpoint, resume to 6 (crossing an epoch
    boundary: 16 samples / batch 4 = 4 iterations per epoch)."""
    cfg = tiny_cfg()
    full = Trainer(cfg, str(tmp_path / "full"))
    m_full = full.run()
    part = Trainer(cfg, str(tmp_path / "part"))
    assert part.run(stop_at=3) is None
    ckpt = load_checkpoint(str(tmp_path / "part/checkpoints/last.pth"))
    assert ckpt["iteration"] == 3 and set(CHECKPOINT_KEYS) <= set(ckpt)
    bank_at_3 = _bank(ckpt["criterion"])
    assert (bank_at_3["contrast.memory.labels"] != 255).any()        # the bank was fed
    resumed = Trainer(cfg, str(tmp_path / "part"),
                      resume=str(tmp_path / "part/checkpoints/last.pth"))
    assert resumed.start_iter == 3
    for k, v in bank_at_3.items():                                    # bank restored
        torch.testing.assert_close(_bank(resumed.criterion.state_dict())[k], v, rtol=0, atol=0)
    m_resumed = resumed.run()

    for a, b in ((full.model, resumed.model), (full.criterion, resumed.criterion)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)
    assert not torch.equal(_bank(full.criterion.state_dict())["contrast.memory.features"],
                           bank_at_3["contrast.memory.features"])
    assert m_full == m_resumed

    def losses(path):
        with open(path) as f:
            return [r for r in map(json.loads, f) if "ce" in r]
    lf, lr = losses(tmp_path / "full/log.jsonl"), losses(tmp_path / "part/log.jsonl")
    assert [r["iteration"] for r in lf] == [r["iteration"] for r in lr] == list(range(1, 7))
    for a, b in zip(lf, lr):
        assert (a["ce"], a["contrast"], a["lr"]) == (b["ce"], b["contrast"], b["lr"])
    # the contrast term starts after its warm-up (2 iterations)
    assert [r["contrast"] > 0 for r in lf] == [False, False, True, True, True, True]


def test_cli_outputs_and_evaluate_reproduces(tmp_path, capsys):
    from pixcontrast.train import evaluate
    from pixcontrast.train.__main__ import main as train_main

    out = tmp_path / "run"
    args = ["--config", SYNTHETIC, "--output-dir", str(out)]
    for k, v in {**TINY, "train.iterations": 4, "train.tensorboard": True,
                 "optim.head_lr_mult": 10.0, "optim.grad_clip": 5.0, "train.amp": "bf16",
                 "optim.warmup_iters": 2}.items():
        args += [f"--{k}", json.dumps(v)]
    assert train_main(args) == 0
    for f in ("checkpoints/last.pth", "checkpoints/best.pth", "log.jsonl", "metrics.json",
              "config.yaml"):
        assert (out / f).is_file(), f
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(out / "tb"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"mIoU", "pixel_acc", "per_class_iou", "iteration"}
    assert metrics["iteration"] == 4 and len(metrics["per_class_iou"]) == 5
    assert 0 <= metrics["mIoU"] <= 1
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_rows = [r for r in log if "ce" in r]
    assert {"ce", "contrast", "lr", "lr_head", "grad_norm"} <= set(train_rows[0])
    assert train_rows[-1]["lr_head"] == pytest.approx(10 * train_rows[-1]["lr"])
    assert train_rows[0]["lr"] < train_rows[1]["lr"]               # linear warm-up, then poly
    assert any("val.mIoU" in r for r in log)

    ckpt = str(out / "checkpoints/last.pth")
    js = tmp_path / "eval.json"
    assert evaluate.main(["--config", str(out / "config.yaml"), "--checkpoint", ckpt,
                          "--json", str(js)]) == 0
    assert json.loads(js.read_text()) == metrics
    # multi-scale + flip and sliding-window inference run on the same checkpoint
    assert evaluate.main(["--config", str(out / "config.yaml"), "--checkpoint", ckpt,
                          "--eval.scales", "[0.75,1.0]", "--eval.flip", "true",
                          "--eval.mode", "slide", "--eval.crop_size", "[24,24]",
                          "--eval.stride", "16"]) == 0
    capsys.readouterr()
    # a missing checkpoint is a usage error: "error: …" naming it, exit status 2
    assert evaluate.main(["--config", SYNTHETIC, "--checkpoint",
                          str(tmp_path / "nope.pth")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint not found:") and "nope.pth" in err
    assert train_main(["--config", SYNTHETIC, "--optim.lrr", "1"]) == 2
    assert "optim.lrr" in capsys.readouterr().err


def _cli(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += [f"--{k}", json.dumps(v)]
    return out


def test_run_time_errors_exit_2_naming_the_cause(tmp_path, capsys):
    """A missing dataset, a missing or mismatched checkpoint, a device or loss backend the
    machine lacks: ``error: …`` on stderr and exit status 2, no traceback. With a
    Cityscapes config and no data, the first error names the data root (the data is
    checked before the pretrained backbone file is read)."""
    from pixcontrast.train import evaluate
    from pixcontrast.train.__main__ import main as train_main

    def fails(main, args, *words):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err, err
        for w in words:
            assert w in err, (w, err)
        return err

    nodata = str(tmp_path / "no_cityscapes")
    cityscapes = os.path.join(ROOT, "configs", "cityscapes_hrnet_w48.yaml")
    err = fails(train_main, ["--config", cityscapes, "--output-dir", str(tmp_path / "cs"),
                             "--data.root", nodata], nodata)
    assert "pretrained" not in err
    fails(evaluate.main, ["--config", cityscapes, "--checkpoint", str(tmp_path / "x.pth"),
                          "--data.root", nodata], nodata)

    base = ["--config", SYNTHETIC, "--output-dir", str(tmp_path / "run")]
    tiny = _cli({**TINY, "train.iterations": 1, "train.val_interval": 0})
    missing = str(tmp_path / "missing.pth")
    fails(train_main, base + tiny + ["--resume", missing], "checkpoint not found", missing)
    # a real checkpoint, then a config it does not fit
    assert train_main(base + tiny) == 0
    capsys.readouterr()
    ckpt = str(tmp_path / "run/checkpoints/last.pth")
    other = ["--model.name", "deeplabv3_tiny"]
    fails(train_main, base + tiny + other + ["--resume", ckpt],
          f"checkpoint {ckpt} does not fit model 'deeplabv3_tiny'", "unexpected keys")
    fails(evaluate.main, ["--config", SYNTHETIC, "--checkpoint", ckpt] + tiny + other,
          f"checkpoint {ckpt} does not fit model 'deeplabv3_tiny'")
    fails(train_main, base + tiny + ["--loss.memory_size", "7", "--resume", ckpt],
          f"checkpoint {ckpt}: loss state does not match", "contrast.memory.features")
    # the checkpoint holds every weight: resume and evaluate do not read model.pretrained
    gone = ["--model.pretrained", str(tmp_path / "moved_away.pth")]
    assert evaluate.main(["--config", SYNTHETIC, "--checkpoint", ckpt] + tiny + gone) == 0
    assert train_main(base + tiny + gone + ["--resume", ckpt]) == 0
    fails(train_main, base + tiny + gone, "moved_away.pth")          # a fresh run does
    if not torch.cuda.is_available():
        fails(train_main, base + tiny + ["--train.device", "cuda"], "'train.device'")
        fails(train_main, base + tiny + ["--loss.backend", "cuda"], "'loss.backend'",
              "cannot run here")


def test_progress_bar_stays_out_of_a_redirected_log(tmp_path, capsys):
    """train.progress on, output not a terminal (captured): no bar, no line per update;
    the validation result is still printed."""
    from pixcontrast.train.__main__ import main as train_main

    args = ["--config", SYNTHETIC, "--output-dir", str(tmp_path / "run")]
    assert train_main(args + _cli({**TINY, "train.iterations": 3, "train.val_interval": 3,
                                   "train.progress": True})) == 0
    out, err = capsys.readouterr()
    log = out + err
    assert "train:" not in log and "it/s" not in log and "\r" not in log, log
    assert "iteration 3: mIoU" in out
    assert len(log.splitlines()) <= 3, log       # the validation line and the final JSON


def test_contrast_off_and_no_bank(tmp_path):
    off = Trainer(tiny_cfg(**{"loss.contrast": False, "train.iterations": 3}),
                  str(tmp_path / "off"))
    assert off.criterion.contrast.memory is None and off.criterion.loss_weight == 0
    off.run()
    nobank = Trainer(tiny_cfg(**{"loss.memory_size": 0, "train.iterations": 3}),
                     str(tmp_path / "nobank"))
    assert nobank.criterion.contrast.memory is None and nobank.criterion.loss_weight > 0
    nobank.run()
    rows = [json.loads(x) for x in (tmp_path / "nobank/log.jsonl").read_text().splitlines()]
    assert [r["contrast"] > 0 for r in rows if "ce" in r] == [False, False, True]
    rows = [json.loads(x) for x in (tmp_path / "off/log.jsonl").read_text().splitlines()]
    assert all(r["contrast"] == 0 for r in rows if "ce" in r)


def test_head_parameters_and_poly_lr():
    from pixcontrast.models import build_model

    model = build_model("hrnet_tiny", 5, proj_dim=16)
    backbone, heads = split_head_parameters(model)
    ids = {id(p) for p in heads}
    assert all(id(p) in ids for p in model.proj_head.parameters())
    assert not any(id(p) in ids for p in model.backbone.parameters())
    assert len(backbone) + len(heads) == len(list(model.parameters()))

    class NoBackbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3)
            self.cls_seg = nn.Conv2d(4, 2, 1)
            self.proj_head = nn.Conv2d(4, 8, 1)
    m = NoBackbone()
    backbone, heads = split_head_parameters(m)
    assert {id(p) for p in backbone} == {id(p) for p in m.stem.parameters()}
    assert len(heads) == 4

    f = poly_lr_lambda(100, 0.9)
    assert f(0) == 1.0 and f(100) == 0.0 and f(50) == pytest.approx(0.5 ** 0.9)
    g = poly_lr_lambda(100, 0.9, warmup_iters=10, warmup_ratio=0.1)
    assert g(0) == pytest.approx(0.1) and g(5) == pytest.approx(0.55 * 0.95 ** 0.9)
    assert g(10) == pytest.approx(f(10))


def test_criterion_takes_every_loss_key():
    """Every loss.* key reaches the constructor that takes it; classes, ignore index and
    embedding size come from data/model; contrast off = no bank and weight 0."""
    over = {"loss.loss_weight": 0.3, "loss.warmup_iters": 7, "loss.aux_weight": 0.2,
            "loss.ohem": True, "loss.ohem_thresh": 0.6, "loss.ohem_min_kept": 99,
            "loss.temperature": 0.2, "loss.base_temperature": 0.05, "loss.max_samples": 96,
            "loss.max_views": 5, "loss.memory_size": 9, "loss.pixels_per_update": 3,
            "loss.include_anchors": True, "loss.backend": "reference"}
    crit = build_criterion(tiny_cfg(**over))
    con = crit.contrast
    assert isinstance(crit, ContrastCELoss) and isinstance(con, PixelContrastLoss)
    assert (crit.num_classes, crit.ignore_index, con.ignore_index) == (5, 255, 255)
    assert (crit.loss_weight, crit.warmup_iters, crit.aux_weight) == (0.3, 7, 0.2)
    assert (crit.ohem, crit.ohem_thresh, crit.ohem_min_kept) == (True, 0.6, 99)
    assert (con.temperature, con.base_temperature, con.max_samples, con.max_views) == \
        (0.2, 0.05, 96, 5)
    assert (con.include_anchors, con.backend) == (True, "reference")
    bank = con.memory                                   # data.num_classes, model.proj_dim
    assert (bank.num_classes, bank.dim, bank.size, bank.pixels_per_update) == (5, 16, 9, 3)
    assert bank.ignore_index == 255
    off = build_criterion(tiny_cfg(**over, **{"loss.contrast": False}))
    assert off.loss_weight == 0.0 and off.contrast.memory is None
    assert off.warmup_iters == 7 and off.contrast.temperature == 0.2


def test_core_imports_nothing_from_the_trainer():
    """Nothing in pixcontrast/ outside train/ (and the evaluate shim) imports the trainer
    wing or one of the removed flat trainer modules: the library core (ops, losses,
    memory_bank, sampling, infonce, models) and the datasets stand without it."""
    import ast

    pkg = os.path.join(ROOT, "pixcontrast")
    trainer = ("pixcontrast.train", "pixcontrast.engine", "pixcontrast.config",
               "pixcontrast.distributed", "pixcontrast.inference", "pixcontrast.metrics",
               "pixcontrast.evaluate")
    checked = 0
    for folder, dirs, files in os.walk(pkg):
        dirs[:] = [d for d in dirs if d not in ("train", "__pycache__")]
        for f in files:
            path = os.path.join(folder, f)
            if not f.endswith(".py") or path == os.path.join(pkg, "evaluate.py"):
                continue
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                else:
                    names = []
                bad = [n for n in names if n.startswith(trainer)]
                assert not bad, f"{path} imports {bad} from the trainer wing"
            checked += 1
    assert checked >= 10
    for gone in ("engine", "train", "config", "distributed", "inference", "metrics"):
        assert not os.path.exists(os.path.join(pkg, gone + ".py")), gone


def test_module_entry_points():
    """python -m pixcontrast.train, pixcontrast.train.evaluate and the pixcontrast.evaluate
    shim start (no runpy double-import warning) and return main's exit status."""
    env = {**os.environ, "PYTHONPATH": ROOT}

    def run(*args):
        return subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    for mod, prog in (("pixcontrast.train", "python -m pixcontrast.train"),
                      ("pixcontrast.train.evaluate", "python -m pixcontrast.evaluate")):
        proc = run(mod, "--help")
        assert proc.returncode == 0, (mod, proc.stderr[-2000:])
        assert proc.stdout.startswith(f"usage: {prog} "), (mod, proc.stdout[:200])
    proc = run("pixcontrast.evaluate", "--config", SYNTHETIC, "--checkpoint", "nope.pth",
               "--optim.lrr", "1")
    assert proc.returncode == 2 and "optim.lrr" in proc.stderr, proc.stderr[-2000:]


def test_two_process_gloo(tmp_path):
    """torchrun, 2 CPU processes: DDP + CPU SyncBN + DistributedSampler; every rank's
    memory bank is identical (checksums gathered into the checkpoint)."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", "-m", "pixcontrast.train", "--config", SYNTHETIC,
           "--output-dir", str(out)]
    for k, v in {**TINY, "data.batch_size": 2, "train.iterations": 4}.items():
        cmd += [f"--{k}", json.dumps(v)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = load_checkpoint(str(out / "checkpoints/last.pth"))
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    sums = ckpt["bank_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1] and sums[0]
    models = ckpt["model_checksums"]                 # DDP kept the replicas in step
    assert len(models) == 2 and models[0] == models[1]
    # both ranks fed the bank: 4 iterations × 2 ranks × 2 images, all entries from both
    labels = ckpt["criterion"]["contrast.memory.labels"]
    assert (labels != 255).sum() > 0
    assert json.loads((out / "metrics.json").read_text())["iteration"] == 4
