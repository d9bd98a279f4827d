"""Checkpoint integrity: every entry of a trainer checkpoint carries a SHA-256; a damaged
file is refused, naming the file and the entry, by every reader (resume, the evaluation
CLI, ``pixcontrast.models.read_state_dict`` / ``build_model(pretrained=...)``); older
checkpoints load with a warning; saves stay atomic.

One tiny synthetic run (hrnet_tiny, 2 iterations, ~2 s) writes the checkpoint every test
damages a copy of.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import pytest
import torch

from pixcontrast.models import CheckpointError, build_model, read_state_dict
from pixcontrast.train import Trainer, load_checkpoint, save_checkpoint
from pixcontrast.train.config import load_config
from tests.test_train import SYNTHETIC, TINY

ARGS = {**TINY, "train.iterations": 2, "train.val_interval": 0,
        "train.checkpoint_interval": 0}


def _cli_args() -> list[str]:
    out = []
    for k, v in ARGS.items():
        out += [f"--{k}", json.dumps(v)]
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 2-iteration run: checkpoints/last.pth, config.yaml."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    Trainer(load_config(SYNTHETIC, ARGS), str(out)).run()
    return out


def _copy(run_dir, tmp_path, name="copy.pth") -> str:
    dst = str(tmp_path / name)
    shutil.copy(run_dir / "checkpoints/last.pth", dst)
    return dst


def _flip_bytes_of(path: str, tensor: torch.Tensor, count: int = 64, skip: int = 8) -> int:
    """Invert ``count`` bytes inside ``tensor``'s stored data in the file at ``path`` (bit
    rot in a tensor's storage: the zip and pickle structure stay intact). The data is found
    by its bytes, which must occur exactly once in the file."""
    data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    assert len(data) >= skip + count
    raw = bytearray(open(path, "rb").read())
    at = raw.find(data)
    assert at >= 0 and raw.find(data, at + 1) < 0, "tensor bytes not found exactly once"
    for i in range(at + skip, at + skip + count):
        raw[i] ^= 0xFF
    with open(path, "wb") as f:
        f.write(raw)
    return at


def _resave_with(path: str, edit) -> None:
    """Load the checkpoint, change it with ``edit(ckpt)`` without updating its checksums,
    and write it back with plain ``torch.save``."""
    ckpt = torch.load(path, weights_only=False)
    edit(ckpt)
    torch.save(ckpt, path)


def test_checksums_cover_every_tensor(run_dir):
    ckpt = load_checkpoint(str(run_dir / "checkpoints/last.pth"))
    sums = ckpt["checksums"]
    for k in ckpt["model"]:
        assert f"model/{k}" in sums, k
    for buf in ("features", "labels", "pointers"):                  # the memory bank
        assert f"criterion/contrast.memory.{buf}" in sums
    momentum = [k for k in sums if k.startswith("optimizer/state/")]
    assert len(momentum) == len(ckpt["optimizer"]["state"]) > 0    # optimizer state
    assert "rng/0/torch" in sums
    # and the non-tensor content of every top-level entry (iteration, config, scheduler...)
    assert set(ckpt) - {"checksums"} <= set(sums)


def test_model_loading_reads_an_intact_trainer_checkpoint(run_dir):
    """``read_state_dict`` takes the ``"model"`` of a trainer checkpoint (with
    ``weights_only=True``: the numpy RNG state is the one non-tensor object allowed)."""
    path = str(run_dir / "checkpoints/last.pth")
    state = read_state_dict(path)
    model = load_checkpoint(path)["model"]
    assert state.keys() == model.keys()
    assert all(torch.equal(state[k], model[k]) for k in model)


def test_flipped_bytes_in_a_weight_are_refused_by_every_reader(run_dir, tmp_path, capsys):
    """64 bytes inverted inside the stored data of one weight: resume, the training and
    evaluation CLIs and model loading refuse, naming the file and the state-dict key."""
    from pixcontrast.train import evaluate
    from pixcontrast.train.__main__ import main as train_main

    path = _copy(run_dir, tmp_path)
    key = "backbone.conv1.weight"
    _flip_bytes_of(path, load_checkpoint(path)["model"][key])
    torch.load(path, weights_only=False)          # torch itself reads the damaged file

    def refused(exc_info):
        msg = str(exc_info.value)
        assert path in msg and f"'{key}'" in msg and "damaged" in msg, msg
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    refused(exc)
    with pytest.raises(CheckpointError) as exc:                       # resume
        Trainer(load_config(SYNTHETIC, ARGS), str(tmp_path / "resumed"), resume=path)
    refused(exc)
    with pytest.raises(CheckpointError) as exc:                       # model loading
        read_state_dict(path)
    refused(exc)
    with pytest.raises(CheckpointError) as exc:
        build_model("hrnet_tiny", num_classes=5, proj_dim=16, pretrained=path)
    refused(exc)
    capsys.readouterr()
    cfg = str(run_dir / "config.yaml")
    assert evaluate.main(["--config", cfg, "--checkpoint", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint ") and path in err and key in err, err
    assert train_main(["--config", SYNTHETIC, "--output-dir", str(tmp_path / "cli"),
                       "--resume", path, *_cli_args()]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint ") and key in err and "Traceback" not in err


@pytest.mark.parametrize("what,edit,named", [
    ("bank", lambda c: c["criterion"]["contrast.memory.features"].view(-1)[:16].add_(1.0),
     "the memory bank (criterion state-dict key 'contrast.memory.features')"),
    ("optimizer", lambda c: c["optimizer"]["state"][0]["momentum_buffer"].view(-1)[:16]
     .mul_(-1.0), "optimizer state '0/momentum_buffer'"),
    ("iteration", lambda c: c.update(iteration=c["iteration"] + 1000), "'iteration'"),
    ("config", lambda c: c["config"]["optim"].update(lr=1.0), "'config'"),
    ("dropped key", lambda c: c["model"].pop("backbone.bn1.bias"), "backbone.bn1.bias"),
])
def test_each_damaged_entry_is_named(run_dir, tmp_path, what, edit, named):
    path = _copy(run_dir, tmp_path)
    _resave_with(path, edit)
    with pytest.raises(CheckpointError, match="damaged") as exc:
        load_checkpoint(path)
    assert named in str(exc.value) and path in str(exc.value), str(exc.value)


def test_flipped_bytes_in_the_bank(run_dir, tmp_path):
    path = _copy(run_dir, tmp_path)
    crit = load_checkpoint(path)["criterion"]
    feats, labels = crit["contrast.memory.features"], crit["contrast.memory.labels"]
    written = (labels != 255).sum(-1)                 # [K, 2] slots written, from slot 0
    c, q = divmod(int(written.argmax()), 2)
    assert written[c, q] >= 2                         # ≥ 2 rows of D=16: 128 bytes
    _flip_bytes_of(path, feats[c, q, :written[c, q]])
    with pytest.raises(CheckpointError, match=r"the memory bank \(criterion state-dict key "
                                              r"'contrast.memory.features'\)"):
        load_checkpoint(path)


def test_checkpoints_without_per_entry_checksums(run_dir, tmp_path):
    """A checkpoint from before the per-entry checksums: its whole-model and bank SHA-256
    are checked (damage refused), and it loads with a warning; one without any checksum
    loads with a warning. A plain state dict (an ImageNet backbone) raises no warning."""
    legacy = _copy(run_dir, tmp_path, "legacy.pth")
    _resave_with(legacy, lambda c: c.pop("checksums"))
    with pytest.warns(UserWarning, match="predates per-entry checksums"):
        ckpt = load_checkpoint(legacy)
    assert ckpt["iteration"] == 2
    with pytest.warns(UserWarning, match="predates per-entry checksums"):
        resumed = Trainer(load_config(SYNTHETIC, ARGS), str(tmp_path / "r"), resume=legacy)
    assert resumed.start_iter == 2

    damaged = _copy(run_dir, tmp_path, "legacy_damaged.pth")
    _resave_with(damaged, lambda c: (c.pop("checksums"),
                                     c["model"]["backbone.conv1.weight"].mul_(2)))
    with pytest.raises(CheckpointError, match="model weights differ .*model_checksums"):
        load_checkpoint(damaged)
    damaged_bank = _copy(run_dir, tmp_path, "legacy_bank.pth")
    _resave_with(damaged_bank, lambda c: (
        c.pop("checksums"), c["criterion"]["contrast.memory.pointers"].add_(1)))
    with pytest.raises(CheckpointError, match="memory bank .*bank_checksums"):
        load_checkpoint(damaged_bank)

    bare = _copy(run_dir, tmp_path, "bare.pth")
    _resave_with(bare, lambda c: [c.pop(k) for k in ("checksums", "model_checksums",
                                                      "bank_checksums")])
    with pytest.warns(UserWarning, match="has no checksums .*unverified"):
        load_checkpoint(bare)

    plain = str(tmp_path / "plain.pth")
    torch.save(build_model("hrnet_tiny", num_classes=5).backbone.state_dict(), plain)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_model("hrnet_tiny", num_classes=5, pretrained=plain)


def test_save_is_atomic_and_roundtrips(run_dir, tmp_path, monkeypatch):
    ckpt = load_checkpoint(str(run_dir / "checkpoints/last.pth"))
    path = str(tmp_path / "a.pth")
    save_checkpoint(ckpt, path)                  # re-saving recomputes the checksums
    assert os.listdir(tmp_path) == ["a.pth"]
    assert load_checkpoint(path)["checksums"] == ckpt["checksums"]
    before = open(path, "rb").read()

    def dies(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(ckpt, path)
    assert open(path, "rb").read() == before     # the old checkpoint is intact
