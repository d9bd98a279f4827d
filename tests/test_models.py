"""Segmentation models: shapes and strides, unit-norm embeddings, published parameter counts,
gradient flow, checkpoints with the official key names, SyncBatchNorm conversion.

Full-size models are built on the meta device where no forward is needed (parameter
counts, key layouts), and run forward only on 1 x 3 x 64 x 64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixcontrast.models import (MODEL_NAMES, CheckpointError, build_model, convert_sync_batchnorm,
                                count_parameters, model_options)

TINY = ("deeplabv3_tiny", "hrnet_tiny", "hrnet_ocr_tiny")
STRIDE = {"deeplabv3": 8, "hrnet": 4}
HAS_AUX = {"deeplabv3_tiny": True, "hrnet_tiny": False, "hrnet_ocr_tiny": True,
           "deeplabv3_r101": True, "hrnet_w48": False, "hrnet_w48_ocr": True}


def _stride(name: str) -> int:
    return STRIDE["deeplabv3" if name.startswith("deeplabv3") else "hrnet"]


def _params_without_head(model: nn.Module) -> int:
    return count_parameters(model) - count_parameters(model.proj_head)


def _check_outputs(name, out, batch, num_classes, proj_dim, height, width):
    s = _stride(name)
    h, w = math.ceil(height / s), math.ceil(width / s)
    assert out["seg"].shape == (batch, num_classes, h, w)
    assert out["embed"].shape == (batch, proj_dim, h, w)
    assert ("seg_aux" in out) == HAS_AUX[name]
    if HAS_AUX[name]:
        assert out["seg_aux"].shape == (batch, num_classes, h, w)
    norms = out["embed"].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
    for v in out.values():
        assert torch.isfinite(v).all()


# ----------------------------------------------------------------------------- building


def test_names_and_errors():
    required = {"deeplabv3_r101", "deeplabv3_r50", "hrnet_w48", "hrnet_w18", "hrnet_w48_ocr",
                *TINY}
    assert required <= set(MODEL_NAMES)
    with pytest.raises(ValueError, match="hrnet_w48_ocr") as exc:
        build_model("hrnet_w64", num_classes=19)
    assert "deeplabv3_r101" in str(exc.value)
    with pytest.raises(TypeError, match="multi_grid.*valid options: proj_head"):
        build_model("hrnet_tiny", num_classes=19, multi_grid=(1, 2, 4))
    with pytest.raises(ValueError, match="convmlp, linear"):
        build_model("hrnet_tiny", num_classes=19, proj_head="mlp")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("hrnet_tiny", num_classes=0)
    assert "multi_grid" in model_options("deeplabv3_r101")
    assert "ocr_key_channels" in model_options("hrnet_w48_ocr")


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_are_small(name):
    with torch.device("meta"):
        model = build_model(name, num_classes=19)
    assert count_parameters(model) < 1_000_000


# ----------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("proj_head", ["convmlp", "linear"])
@pytest.mark.parametrize("name", TINY)
def test_tiny_outputs_shapes_strides_unit_norm(name, proj_head):
    # odd sizes: the grid is ceil(H / stride), seg and embed on the same grid
    batch, k, d, height, width = 3, 7, 24, 50, 70
    model = build_model(name, num_classes=k, proj_dim=d, proj_head=proj_head)
    x = torch.randn(batch, 3, height, width)
    _check_outputs(name, model.train()(x), batch, k, d, height, width)
    with torch.no_grad():
        _check_outputs(name, model.eval()(x), batch, k, d, height, width)
    assert model.output_stride == _stride(name)


@pytest.mark.parametrize("name", ["deeplabv3_r101", "hrnet_w48", "hrnet_w48_ocr"])
def test_full_models_forward(name):
    model = build_model(name, num_classes=19, proj_dim=128).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    _check_outputs(name, out, 1, 19, 128, 64, 64)
    # the projection head reads the layer4 (2048) / concatenated-branch (720) features
    assert model.proj_head.in_channels == (2048 if name.startswith("deeplab") else 720)


@pytest.mark.parametrize("disable", [dict(proj_dim=0), dict(proj_head=None)])
def test_without_projection_head(disable):
    model = build_model("hrnet_ocr_tiny", num_classes=5, **disable)
    assert model.proj_head is None
    out = model(torch.randn(2, 3, 32, 32))
    assert set(out) == {"seg", "seg_aux"}


def test_multi_grid_dilations():
    with torch.device("meta"):
        plain = build_model("deeplabv3_r50", num_classes=19)
        grid = build_model("deeplabv3_r50", num_classes=19, multi_grid=(1, 2, 4))
    assert [b.conv2.dilation[0] for b in plain.backbone.layer3] == [2] * 6
    assert [b.conv2.dilation[0] for b in plain.backbone.layer4] == [4, 4, 4]
    assert [b.conv2.dilation[0] for b in grid.backbone.layer4] == [4, 8, 16]
    assert all(b.conv2.stride == (1, 1) for b in grid.backbone.layer4)


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("name,num_classes,expected", [
    ("hrnet_w48", 19, 65.86),       # HRNetV2-W48, Wang et al. TPAMI 2020
    ("hrnet_w48_ocr", 19, 70.37),   # HRNet-W48 + OCR, Yuan et al. ECCV 2020
])
def test_published_parameter_counts(name, num_classes, expected):
    with torch.device("meta"):
        model = build_model(name, num_classes=num_classes)
    assert round(_params_without_head(model) / 1e6, 2) == expected


@pytest.mark.parametrize("name,expected", [
    # torchvision's deeplabv3_resnet{101,50} (with aux classifier, 21 classes)
    ("deeplabv3_r101", 60_996_202),
    ("deeplabv3_r50", 42_004_074),
])
def test_deeplab_parameter_counts_match_torchvision(name, expected):
    with torch.device("meta"):
        model = build_model(name, num_classes=21)
    assert _params_without_head(model) == expected


def test_projection_head_sizes():
    with torch.device("meta"):
        mlp = build_model("hrnet_w48", num_classes=19, proj_dim=256)
        lin = build_model("hrnet_w48", num_classes=19, proj_dim=256, proj_head="linear")
    c = 720
    assert count_parameters(mlp.proj_head) == c * c + c + 2 * c + c * 256 + 256
    assert count_parameters(lin.proj_head) == c * 256 + 256
    assert _params_without_head(mlp) == _params_without_head(lin)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", TINY)
def test_gradient_flow(name):
    k = 5
    model = build_model(name, num_classes=k, proj_dim=16).train()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    target = torch.randint(0, k, out["seg"].shape[:1] + out["seg"].shape[2:])
    loss = F.cross_entropy(out["seg"], target)
    loss = loss + (out["embed"] * torch.randn_like(out["embed"])).sum()
    if "seg_aux" in out:
        loss = loss + 0.4 * F.cross_entropy(out["seg_aux"], target)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_embedding_gradient_reaches_backbone_only_through_head():
    model = build_model("hrnet_tiny", num_classes=5, proj_dim=16).train()
    out = model(torch.randn(2, 3, 64, 64))
    (out["embed"] * torch.randn_like(out["embed"])).sum().backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.last_layer.parameters())


def test_initialisation():
    model = build_model("hrnet_w18", num_classes=19)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()
    conv = model.backbone.stage4[0].branches[3][0].conv1   # 144 -> 144, 3x3
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)


# ----------------------------------------------------------------------------- checkpoints
#
# The key layouts below are written from the official descriptions, independently of the
# model code: hrnetv2_w48_imagenet_pretrained.pth (HRNet-Image-Classification) and
# torchvision's ResNet.


def _bn(prefix, c, out, with_counter=True):
    out[f"{prefix}.weight"] = (c,)
    out[f"{prefix}.bias"] = (c,)
    out[f"{prefix}.running_mean"] = (c,)
    out[f"{prefix}.running_var"] = (c,)
    if with_counter:
        out[f"{prefix}.num_batches_tracked"] = ()


def _conv(prefix, cout, cin, k, out):
    out[f"{prefix}.weight"] = (cout, cin, k, k)


def _bottleneck(p, cin, planes, out, counter):
    _conv(f"{p}.conv1", planes, cin, 1, out); _bn(f"{p}.bn1", planes, out, counter)
    _conv(f"{p}.conv2", planes, planes, 3, out); _bn(f"{p}.bn2", planes, out, counter)
    _conv(f"{p}.conv3", 4 * planes, planes, 1, out); _bn(f"{p}.bn3", 4 * planes, out, counter)
    if cin != 4 * planes:
        _conv(f"{p}.downsample.0", 4 * planes, cin, 1, out)
        _bn(f"{p}.downsample.1", 4 * planes, out, counter)


def _basic(p, cin, planes, out, counter):
    _conv(f"{p}.conv1", planes, cin, 3, out); _bn(f"{p}.bn1", planes, out, counter)
    _conv(f"{p}.conv2", planes, planes, 3, out); _bn(f"{p}.bn2", planes, out, counter)
    if cin != planes:
        _conv(f"{p}.downsample.0", planes, cin, 1, out)
        _bn(f"{p}.downsample.1", planes, out, counter)


def official_hrnet_shapes(width, stem=64, l1_planes=64, l1_blocks=4, modules=(1, 4, 3),
                          blocks=4, counter=False, classification=True):
    """key -> shape of an official HRNet ImageNet checkpoint (old checkpoints carry no
    num_batches_tracked: ``counter=False``)."""
    out = {}
    _conv("conv1", stem, 3, 3, out); _bn("bn1", stem, out, counter)
    _conv("conv2", stem, stem, 3, out); _bn("bn2", stem, out, counter)
    for b in range(l1_blocks):
        _bottleneck(f"layer1.{b}", stem if b == 0 else 4 * l1_planes, l1_planes, out, counter)
    chans = [width * 2 ** i for i in range(4)]
    pre = [4 * l1_planes]
    for s, n_mod in zip((2, 3, 4), modules):
        cur = chans[:s]
        t = f"transition{s - 1}"
        for i, c in enumerate(cur):
            if i < len(pre):
                if c != pre[i]:
                    _conv(f"{t}.{i}.0", c, pre[i], 3, out); _bn(f"{t}.{i}.1", c, out, counter)
            else:   # one new, lower-resolution branch from the last one
                _conv(f"{t}.{i}.0.0", c, pre[-1], 3, out); _bn(f"{t}.{i}.0.1", c, out, counter)
        for m in range(n_mod):
            p = f"stage{s}.{m}"
            for i, c in enumerate(cur):
                for b in range(blocks):
                    _basic(f"{p}.branches.{i}.{b}", c, c, out, counter)
            for i, ci in enumerate(cur):
                for j, cj in enumerate(cur):
                    f = f"{p}.fuse_layers.{i}.{j}"
                    if j > i:
                        _conv(f"{f}.0", ci, cj, 1, out); _bn(f"{f}.1", ci, out, counter)
                    for k in range(i - j):
                        last = k == i - j - 1
                        co = ci if last else cj
                        _conv(f"{f}.{k}.0", co, cj, 3, out); _bn(f"{f}.{k}.1", co, out, counter)
        pre = cur
    if classification:
        out["incre_modules.0.0.conv1.weight"] = (32, width, 1, 1)
        out["downsamp_modules.0.0.weight"] = (256, 128, 3, 3)
        out["downsamp_modules.0.0.bias"] = (256,)
        out["final_layer.0.weight"] = (2048, 1024, 1, 1)
        _bn("final_layer.1", 2048, out, counter)
        out["classifier.weight"] = (1000, 2048)
        out["classifier.bias"] = (1000,)
    return out


def torchvision_resnet_shapes(layers, width=64, bottleneck=True):
    out = {}
    _conv("conv1", width, 3, 7, out); _bn("bn1", width, out)
    cin = width
    for li, n in enumerate(layers, start=1):
        planes = width * 2 ** (li - 1)
        for b in range(n):
            p = f"layer{li}.{b}"
            # every layer's first block changes the channels, so it has a downsample
            if bottleneck:
                _bottleneck(p, cin, planes, out, True)
                cin = 4 * planes
            else:
                _basic(p, cin, planes, out, True)
                cin = planes
    out["fc.weight"] = (1000, cin)
    out["fc.bias"] = (1000,)
    return out


def _random_value(key, shape):
    if shape == ():
        return torch.randint(0, 100, ())
    if key.endswith("running_var"):
        return torch.rand(shape) + 0.5
    if len(shape) == 4:   # conv weights at a scale that keeps deep activations finite
        return torch.randn(shape) / math.sqrt(shape[1] * shape[2] * shape[3])
    return torch.randn(shape)


def _random_state(shapes):
    return {k: _random_value(k, s) for k, s in shapes.items()}


HRNET_TINY_LAYOUT = dict(width=8, stem=32, l1_planes=16, l1_blocks=1, modules=(1, 1, 1), blocks=2)


@pytest.mark.parametrize("name,layout", [
    ("hrnet_w48", dict(width=48)), ("hrnet_w18", dict(width=18)),
    ("deeplabv3_r101", dict(layers=(3, 4, 23, 3))), ("deeplabv3_r50", dict(layers=(3, 4, 6, 3))),
])
def test_backbone_key_layout_is_official(name, layout):
    with torch.device("meta"):
        model = build_model(name, num_classes=19)
    own = {k: tuple(v.shape) for k, v in model.backbone.state_dict().items()}
    if name.startswith("hrnet"):
        ref = official_hrnet_shapes(**layout, counter=True, classification=False)
    else:
        ref = torchvision_resnet_shapes(**layout)
        del ref["fc.weight"], ref["fc.bias"]
    assert own == ref


@pytest.mark.parametrize("name,wrapper", [
    ("hrnet_w18", None), ("hrnet_tiny", "state_dict"), ("hrnet_ocr_tiny", "module"),
])
def test_load_official_hrnet_checkpoint(tmp_path, name, wrapper):
    layout = dict(width=18) if name == "hrnet_w18" else HRNET_TINY_LAYOUT
    state = _random_state(official_hrnet_shapes(**layout, counter=False))
    obj = state
    if wrapper == "state_dict":
        obj = {"state_dict": state, "epoch": 3}
    elif wrapper == "module":
        obj = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "hrnet_imagenet.pth"
    torch.save(obj, path)
    model = build_model(name, num_classes=19, pretrained=path)
    own = model.backbone.state_dict()
    for k, v in state.items():
        if k.startswith(("incre_modules", "downsamp_modules", "final_layer", "classifier")):
            continue
        assert torch.equal(own[k], v), k
    out = model.eval()(torch.randn(1, 3, 32, 32))
    assert torch.isfinite(out["seg"]).all()


def test_load_torchvision_resnet_checkpoint(tmp_path):
    state = _random_state(torchvision_resnet_shapes((1, 1, 1, 1), width=16, bottleneck=False))
    path = tmp_path / "resnet_tiny.pth"
    torch.save(state, path)
    model = build_model("deeplabv3_tiny", num_classes=19, pretrained=str(path))
    own = model.backbone.state_dict()
    for k, v in state.items():
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k


def test_mismatched_checkpoint_lists_keys(tmp_path):
    state = _random_state(official_hrnet_shapes(**HRNET_TINY_LAYOUT))
    del state["stage3.0.branches.2.1.conv2.weight"]
    state["conv1.weight"] = torch.randn(16, 3, 3, 3)
    state["head.extra.weight"] = torch.randn(3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as exc:
        build_model("hrnet_tiny", num_classes=19, pretrained=path)
    msg = str(exc.value)
    assert "missing keys 1: stage3.0.branches.2.1.conv2.weight" in msg
    assert "unexpected keys 1: head.extra.weight" in msg
    assert "conv1.weight (checkpoint (16, 3, 3, 3), model (32, 3, 3, 3))" in msg
    assert isinstance(exc.value, ValueError)


def test_wrong_architecture_checkpoint(tmp_path):
    # a truncated W18 checkpoint into the tiny HRNet: missing stage4, mismatched widths
    path = tmp_path / "w18.pth"
    shapes = official_hrnet_shapes(width=18)
    torch.save(_random_state({k: s for k, s in shapes.items() if "stage4" not in k}), path)
    with pytest.raises(CheckpointError, match=r"missing keys \d+: stage4.*shape mismatches"):
        build_model("hrnet_tiny", num_classes=19, pretrained=path)
    # a ResNet checkpoint into HRNet
    path = tmp_path / "resnet.pth"
    torch.save(_random_state(torchvision_resnet_shapes((1, 1, 1, 1), 16, False)), path)
    with pytest.raises(CheckpointError, match="unexpected keys.*layer2.0.conv1.weight"):
        build_model("hrnet_ocr_tiny", num_classes=19, pretrained=path)


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(torch.randint(0, 256, (1000,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        build_model("hrnet_tiny", num_classes=19, pretrained=junk)
    not_dict = tmp_path / "tensor.pth"
    torch.save(torch.randn(3), not_dict)
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        build_model("hrnet_tiny", num_classes=19, pretrained=not_dict)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_model("hrnet_tiny", num_classes=19, pretrained=tmp_path / "missing.pth")


# ----------------------------------------------------------------------------- SyncBN


@pytest.mark.parametrize("name", TINY)
def test_sync_batchnorm_conversion(name):
    model = build_model(name, num_classes=5, proj_dim=8)
    model.train()(torch.randn(4, 3, 32, 32))          # non-trivial running statistics
    model.eval()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    synced = convert_sync_batchnorm(build_model(name, num_classes=5, proj_dim=8))
    synced.load_state_dict(model.state_dict())
    synced.eval()
    assert n_bn > 0
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and
                   not isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == n_bn
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), synced(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
