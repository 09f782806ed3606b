"""The model registry and the CIFAR zoo: shapes, gradients, parameter counts, taps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.errors import ModelError, RegistryError
from kdlab.models import MODELS, count_parameters, create_model, register_model
from kdlab.taps import FeatureTaps, Tap, probe_shapes

# Parameter counts with 100 classes. Reference: RepDistiller's models/ (github
# HobbitLong/RepDistiller, commit b84f547), each model built with num_classes=100 and
# counted with sum(p.numel()); ours were measured the same way and are equal. Our
# state_dict keys and shapes are identical to the reference too, and with the reference's
# weights loaded the logits agree to 2e-7 relative (train and eval mode, 32x32 input).
REFERENCE_PARAMS_100 = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,  # ~0.86M
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,  # ~1.23M
    "resnet32x4": 7_433_860,  # ~7.43M
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,  # ~2.26M
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "mobilenetv2": 812_836,  # RepDistiller "MobileNetV2" = mobile_half (width 0.5)
    "shufflenetv1": 949_258,  # RepDistiller "ShuffleV1"
    "shufflenetv2": 1_355_528,  # RepDistiller "ShuffleV2" (net_size 1)
}
ZOO = sorted(REFERENCE_PARAMS_100)

# Models that need kwargs to take a 3x32x32 input.
KWARGS_32 = {"mlp": {"image_size": 32}}
# The zoo models small enough to also check quickly on 1x8x8 inputs (digits).
SMALL_ZOO = [
    "resnet8",
    "resnet8x4",
    "wrn_16_1",
    "vgg8",
    "mobilenetv2",
    "shufflenetv1",
    "shufflenetv2",
]


def _forward_backward(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    model.train()
    out = model(x)
    assert isinstance(out, torch.Tensor), "models return logits only"
    assert out.shape == (x.shape[0], num_classes)
    assert torch.isfinite(out).all()
    loss = F.cross_entropy(out, torch.arange(x.shape[0]) % num_classes)
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for _, p in params)
    # The first parameter (the stem) receives signal through the whole network.
    assert params[0][1].grad.abs().sum() > 0


# Sequence models (N, C, L) are checked in test_cnn1d.py.
@pytest.mark.parametrize("name", [n for n in MODELS.names() if not n.startswith("cnn1d")])
def test_every_model_runs_on_cifar_sized_input(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=3, **KWARGS_32.get(name, {}))
    _forward_backward(model, torch.randn(2, 3, 32, 32), 10)


@pytest.mark.parametrize("name", SMALL_ZOO)
def test_zoo_models_run_on_digits_sized_input(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1)
    _forward_backward(model, torch.randn(2, 1, 8, 8), 10)


@pytest.mark.parametrize("name", ZOO)
def test_parameter_count_matches_reference(name: str) -> None:
    model = create_model(name, num_classes=100)
    assert count_parameters(model) == REFERENCE_PARAMS_100[name]
    # No in-place op anywhere: a tapped tensor must never be overwritten later.
    assert not [n for n, m in model.named_modules() if getattr(m, "inplace", False)]


def test_parameter_count_follows_num_classes_and_width() -> None:
    # Only the classifier depends on the number of classes: (features + 1) per class.
    assert count_parameters(create_model("resnet20", 10)) == 278_324 - 90 * 65
    half = count_parameters(create_model("mobilenetv2", 10))
    full = count_parameters(create_model("mobilenetv2", 10, width_mult=1.0))
    assert full > 2 * half


def test_registry_rejects_duplicates_and_suggests_names() -> None:
    with pytest.raises(RegistryError, match="'resnet20' is already registered"):
        register_model("resnet20")(lambda num_classes, in_channels=3: nn.Identity())
    with pytest.raises(RegistryError, match="did you mean .*'resnet20'"):
        create_model("resnet21", 10)
    with pytest.raises(ModelError, match="wrn_16_2"):
        create_model("wrn_16_2", 10, widen=3)  # not a kwarg of this factory
    with pytest.raises(ModelError, match="num_classes"):
        create_model("resnet8", 0)


# The tap paths documented in each family's module docstring, with their shapes for one
# 3x32x32 input (batch dim included): the docs are only useful if they are right.
DOCUMENTED_TAPS = {
    "resnet56": {
        "relu": (16, 32, 32),
        "layer1": (16, 32, 32),
        "layer2": (32, 16, 16),
        "layer3": (64, 8, 8),
        "layer2.8.relu:input": (32, 16, 16),
        "fc:input": (64,),
    },
    "wrn_40_2": {
        "conv1": (16, 32, 32),
        "block1": (32, 32, 32),
        "block2": (64, 16, 16),
        "block3": (128, 8, 8),
        "block2.layer.0.bn1": (32, 32, 32),
        "block3.layer.0.bn1": (64, 16, 16),
        "bn1": (128, 8, 8),
        "fc:input": (128,),
    },
    "vgg8": {
        "relu0": (64, 32, 32),
        "block1": (128, 16, 16),
        "block2": (256, 8, 8),
        "block3": (512, 4, 4),
        "block4": (512, 4, 4),
        "relu4": (512, 4, 4),
        "classifier:input": (512,),
    },
    "mobilenetv2": {
        "conv1": (16, 16, 16),
        "blocks.1": (12, 16, 16),
        "blocks.2": (16, 8, 8),
        "blocks.4": (48, 4, 4),
        "blocks.6": (160, 2, 2),
        "blocks.1.1.conv.7": (12, 16, 16),
        "conv2": (1280, 2, 2),
        "classifier:input": (1280,),
    },
    "shufflenetv1": {
        "relu": (24, 32, 32),
        "layer1": (240, 16, 16),
        "layer2": (480, 8, 8),
        "layer3": (960, 4, 4),
        "layer1.3.relu:input": (240, 16, 16),
        "layer2.7.relu:input": (480, 8, 8),
        "linear:input": (960,),
    },
    "shufflenetv2": {
        "relu": (24, 32, 32),
        "layer1": (116, 16, 16),
        "layer2": (232, 8, 8),
        "layer3": (464, 4, 4),
        "layer1.3.bn3": (58, 16, 16),
        "relu2": (1024, 4, 4),
        "linear:input": (1024,),
    },
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED_TAPS))
def test_documented_taps_have_documented_shapes(name: str) -> None:
    model = create_model(name, num_classes=100)
    shapes = probe_shapes(model, list(DOCUMENTED_TAPS[name]), torch.randn(1, 3, 32, 32))
    got = {str(t): tuple(s[1:]) for t, s in shapes.items() if t.path}
    assert got == DOCUMENTED_TAPS[name]
    assert shapes[Tap("")] == (1, 100)


def test_preactivation_tap_on_a_nested_block_is_not_overwritten() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10).train()
    taps = FeatureTaps(model, ["layer2.2.relu:input", "layer2.2", "layer2.2.bn2", "fc:input"])
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    pre = taps.get(Tap.parse("layer2.2.relu:input"))
    post = taps.get(Tap("layer2.2"))
    branch = taps.get(Tap("layer2.2.bn2"))
    # The block's output is ReLU of its pre-activation, which has negative entries (so
    # an in-place ReLU would have destroyed it), and the identity shortcut is the
    # difference between the pre-activation and the residual branch.
    assert (pre < 0).any()
    assert torch.equal(post, F.relu(pre))
    shortcut = pre - branch
    assert (shortcut >= 0).all()  # the previous block's output, after its ReLU
    feats = taps.get(Tap("fc", "input"))
    assert torch.allclose(model.fc(feats), logits, atol=1e-6)
    taps.remove()


def test_vgg_pools_after_block3_only_for_large_inputs() -> None:
    model = create_model("vgg8", num_classes=10)
    for size, spatial in ((32, 4), (64, 4)):
        shapes = probe_shapes(model, ["block3", "block4"], torch.randn(1, 3, size, size))
        assert shapes[Tap("block3")][-1] == spatial * (size // 32)
        assert shapes[Tap("block4")][-1] == spatial
