"""MedicalPatchNet: exact torchvision layout, forward semantics, variants, BatchNorm calibration."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from cxr_edge.metadata import ModelVariant
from cxr_edge.model.batchnorm import calibrate_batchnorm, calibrated_random_model
from cxr_edge.model.efficientnet import StochasticDepth, make_divisible
from cxr_edge.model.patchnet import VARIANTS, MedicalPatchNet, variant_named
from cxr_edge.model.sample_patches import chest_image, image_like_patches

SHAPES_JSON = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "reference"
    / "medicalpatchnet_state_dict_shapes.json"
)

# torchvision efficientnet_v2_s stage strides (features.1 .. features.6), written out independently.
STAGE_STRIDES = (1, 2, 2, 2, 1, 2)


@pytest.fixture(scope="module")
def small_model():
    """Depth 0.5 at width 0.25: fused blocks with and without expansion, residual fused and MBConv blocks."""
    return calibrated_random_model(ModelVariant("narrow", 0.25, 0.5), num_classes=5, seed=3, patches=32)


def test_full_state_dict_matches_reference_fact_sheet_key_by_key():
    if not SHAPES_JSON.is_file():
        pytest.skip("../shared/reference fact sheet not present")
    sheet = json.loads(SHAPES_JSON.read_text())
    state = MedicalPatchNet(VARIANTS["full"], num_classes=14).state_dict()
    assert list(state) == list(sheet["keys"])  # same keys, same order
    assert len(state) == sheet["num_keys"]
    for key, fact in sheet["keys"].items():
        assert list(state[key].shape) == fact["shape"], key
        assert str(state[key].dtype).removeprefix("torch.") == fact["dtype"], key
    model = MedicalPatchNet(VARIANTS["full"], num_classes=14)
    assert sum(p.numel() for p in model.parameters()) == sheet["total_parameters"]
    assert sum(b.numel() for b in model.buffers()) == sheet["total_buffer_elements"]
    assert sum(1 for _ in model.parameters()) == sheet["num_parameter_keys"]


def test_make_divisible_follows_torchvision_rule():
    # Hand-computed from torchvision's rule: round to the nearest multiple of 8, at least 8,
    # bumped up one step when rounding lost more than 10 %.
    assert make_divisible(24 * 0.25) == 8
    assert make_divisible(1280 * 0.25) == 320
    assert make_divisible(10) == 16  # 8 < 0.9 * 10 -> 16
    assert make_divisible(12) == 16
    assert make_divisible(24 * 4) == 96


def test_variants_scale_width_and_depth():
    tiny = MedicalPatchNet(VARIANTS["tiny"], num_classes=3)
    feats = tiny.baseBackbone.features
    assert feats[0][0].weight.shape == (8, 1, 3, 3)  # stem: 24 * 0.25 -> 8 channels, 1 input channel
    assert [len(feats[i]) for i in range(1, 7)] == [math.ceil(n * 0.25) for n in (2, 4, 4, 6, 9, 15)]
    assert tiny.baseBackbone.classifier[1].weight.shape == (3, 320)
    assert variant_named("tiny") == ModelVariant("tiny", 0.25, 0.25)
    with pytest.raises(ValueError, match="unknown model variant"):
        variant_named("huge")


def _bn(x, sd, prefix):
    mean, var = sd[prefix + ".running_mean"], sd[prefix + ".running_var"]
    scale = sd[prefix + ".weight"] / torch.sqrt(var + 1e-3)
    return (x - mean[None, :, None, None]) * scale[None, :, None, None] + sd[prefix + ".bias"][
        None, :, None, None
    ]


def _depthwise(x, w, stride):
    """Per-channel kxk conv, zero padding (k-1)//2, as a sum of shifted slices (torch's float64
    grouped conv is ~100x slower than this)."""
    k = w.shape[-1]
    pad = (k - 1) // 2
    xp = F.pad(x, (pad, pad, pad, pad))
    h, wd = (x.shape[2] + 2 * pad - k) // stride + 1, (x.shape[3] + 2 * pad - k) // stride + 1
    out = torch.zeros(x.shape[0], x.shape[1], h, wd, dtype=x.dtype)
    for dy in range(k):
        for dx in range(k):
            window = xp[
                :, :, dy : dy + stride * (h - 1) + 1 : stride, dx : dx + stride * (wd - 1) + 1 : stride
            ]
            out += w[None, :, 0, dy, dx, None, None] * window
    return out


def _conv_bn(x, sd, prefix, stride=1, act=True):
    w = sd[prefix + ".0.weight"]
    if w.shape[1] == 1 and x.shape[1] > 1:
        y = _depthwise(x, w, stride)
    else:
        y = F.conv2d(x, w, stride=stride, padding=(w.shape[-1] - 1) // 2)
    y = _bn(y, sd, prefix + ".1")
    return F.silu(y) if act else y


def reference_forward(state, x):
    """EfficientNetV2 forward in float64 written from torchvision's definition, reading only the state dict."""
    sd = {k.removeprefix("baseBackbone."): v.double() for k, v in state.items()}
    x = _conv_bn(x.double(), sd, "features.0", stride=2)
    for stage, stage_stride in enumerate(STAGE_STRIDES, start=1):
        block = 0
        while f"features.{stage}.{block}.block.0.0.weight" in sd:
            p = f"features.{stage}.{block}.block"
            stride = stage_stride if block == 0 else 1
            inp = x
            if f"{p}.2.fc1.weight" in sd or f"{p}.1.fc1.weight" in sd:  # MBConv
                i = 0
                if sd[f"{p}.1.0.weight"].shape[1] == 1 and f"{p}.2.fc1.weight" in sd:  # has 1x1 expand
                    x = _conv_bn(x, sd, f"{p}.0")
                    i = 1
                x = _conv_bn(x, sd, f"{p}.{i}", stride=stride)  # depthwise
                s = x.mean(dim=(2, 3), keepdim=True)
                s = F.silu(F.conv2d(s, sd[f"{p}.{i + 1}.fc1.weight"], sd[f"{p}.{i + 1}.fc1.bias"]))
                x = x * torch.sigmoid(F.conv2d(s, sd[f"{p}.{i + 1}.fc2.weight"], sd[f"{p}.{i + 1}.fc2.bias"]))
                x = _conv_bn(x, sd, f"{p}.{i + 2}", act=False)
            elif f"{p}.1.0.weight" in sd:  # fused with expansion
                x = _conv_bn(_conv_bn(x, sd, f"{p}.0", stride=stride), sd, f"{p}.1", act=False)
            else:  # fused, expand ratio 1
                x = _conv_bn(x, sd, f"{p}.0", stride=stride)
            if stride == 1 and inp.shape == x.shape:
                x = x + inp
            block += 1
    x = _conv_bn(x, sd, "features.7").mean(dim=(2, 3))
    return x @ sd["classifier.1.weight"].T + sd["classifier.1.bias"]


@pytest.mark.parametrize("which", ["tiny", "narrow"])
def test_forward_equals_float64_reference(which, tiny_model, small_model):
    model = tiny_model if which == "tiny" else small_model
    patches = torch.from_numpy(image_like_patches(4, seed=11))
    with torch.no_grad():
        got = model(patches).double()
    expected = reference_forward(model.state_dict(), patches)
    assert got.shape == (4, model.num_classes)
    assert float(expected.std()) > 0.5  # a meaningful comparison, not two near-zero vectors
    assert torch.allclose(got, expected, atol=2e-4, rtol=0)


def test_image_patch_logits_order_is_row_major(tiny_model):
    chest = chest_image(256, seed=4)
    images = np.stack([chest[None, :128, :192], chest[None, 100:228, 50:242]])
    got = tiny_model.image_patch_logits(torch.from_numpy(images), patch_size=64)
    assert got.shape == (2, 2 * 3, 14)
    cut = [
        images[b, :, r * 64 : r * 64 + 64, c * 64 : c * 64 + 64]
        for b in range(2)
        for r in range(2)
        for c in range(3)
    ]
    with torch.no_grad():
        expected = tiny_model(torch.from_numpy(np.stack(cut))).reshape(2, 6, 14)
    assert float(expected.std()) > 0.5
    assert torch.allclose(got, expected, atol=1e-4)


def test_stochastic_depth_is_identity_at_eval_and_random_in_training():
    x = torch.ones(64, 4, 2, 2)
    layer = StochasticDepth(0.5)
    assert torch.equal(layer.eval()(x), x)
    out = layer.train()(x)
    kept = out[:, 0, 0, 0]
    assert set(kept.tolist()) <= {0.0, 2.0} and 0 < int((kept == 0).sum()) < 64  # rows dropped, rest rescaled


def test_calibration_sets_running_stats_from_what_each_bn_sees():
    with torch.random.fork_rng():
        torch.manual_seed(5)
        model = MedicalPatchNet(VARIANTS["tiny"], num_classes=14)
    patches = image_like_patches(32, seed=2)
    with torch.no_grad():
        degenerate = model.eval()(torch.from_numpy(patches))
    assert float(degenerate.std()) < 1e-3  # what a plain random init gives

    calibrate_batchnorm(model, patches)
    stem_conv = model.baseBackbone.features[0][0].weight.detach().double().numpy()
    # Stem conv output computed independently (float64 numpy, stride 2, zero padding 1).
    padded = np.pad(patches[:, 0].astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((32, stem_conv.shape[0], 32, 32))
    for dy in range(3):
        for dx in range(3):
            window = padded[:, dy : dy + 64 : 2, dx : dx + 64 : 2]
            out += stem_conv[None, :, 0, dy, dx, None, None] * window[:, None]
    bn = model.baseBackbone.features[0][1]
    np.testing.assert_allclose(bn.running_mean.numpy(), out.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), out.var(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)

    with torch.no_grad():
        logits = model(torch.from_numpy(image_like_patches(64, seed=9))).double()
    assert float(logits.std(dim=0).mean()) >= 1.0  # realistic spread across patches, per class
    assert torch.isfinite(logits).all()


def test_calibration_head_std_sets_logit_spread():
    with torch.random.fork_rng():
        torch.manual_seed(6)
        model = MedicalPatchNet(VARIANTS["tiny"], num_classes=4)
    patches = image_like_patches(48, seed=4)
    calibrate_batchnorm(model, patches, head_std=2.0)
    with torch.no_grad():
        logits = model(torch.from_numpy(patches)).double()
    assert float(logits.std(dim=0).mean()) == pytest.approx(2.0, rel=1e-3)
