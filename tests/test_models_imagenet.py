"""The ImageNet zoo: parameter counts of the reference implementations, torchvision's
state_dict layout, and the taps the ImageNet recipes name."""

from __future__ import annotations

import pytest
import torch

from kdlab.models import count_parameters, create_model
from kdlab.taps import probe_shapes


def _mobilenetv1_reference_count(num_classes: int) -> int:
    """mdistiller's MobileNetV1 counted by hand: a 3x3 conv 3->32 + BN, then per
    separable block a 3x3 depthwise conv + BN on c_in and a 1x1 conv c_in->c_out + BN."""
    total = 3 * 32 * 9 + 2 * 32
    widths = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
    for cin, cout in zip(widths, widths[1:]):
        total += cin * 9 + 2 * cin + cin * cout + 2 * cout
    return total + 1024 * num_classes + num_classes


# torchvision's documented counts (torchvision.models: ResNet18_Weights.IMAGENET1K_V1 and
# friends list num_params 11689512, 21797672, 25557032).
@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("mobilenetv1", _mobilenetv1_reference_count(1000)),
    ],
)
def test_parameter_counts_match_the_references(name: str, params: int) -> None:
    assert count_parameters(create_model(name, 1000)) == params
    if name == "mobilenetv1":
        assert params == 4_231_976


def test_cifar_names_still_build_cifar_models() -> None:
    assert type(create_model("resnet20", 100)).__name__ == "CifarResNet"
    assert type(create_model("resnet18", 100)).__name__ == "ImageNetResNet"


@pytest.mark.parametrize(
    ("name", "taps"),
    [
        (
            "resnet18",
            {"layer4": (512, 2, 2), "layer4.1.relu:input": (512, 2, 2), "fc:input": (512,)},
        ),
        ("resnet50", {"layer3": (1024, 4, 4), "layer4.2.relu:input": (2048, 2, 2)}),
        ("mobilenetv1", {"model.11": (512, 4, 4), "model.13.5:input": (1024, 2, 2)}),
    ],
)
def test_recipe_taps_exist_with_their_shapes(name: str, taps: dict[str, tuple[int, ...]]) -> None:
    model = create_model(name, 10)
    shapes = probe_shapes(model, list(taps), torch.randn(2, 3, 64, 64))
    assert {str(k): tuple(v[1:]) for k, v in shapes.items() if str(k)} == taps


def _torchvision_models():  # noqa: ANN202
    try:
        import torchvision.models as tvm  # noqa: PLC0415
    except Exception:  # not importable beside the CPU torch 2.13 wheel
        return None
    return tvm


@pytest.mark.skipif(_torchvision_models() is None, reason="torchvision does not import here")
@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_torchvision_weights_load_and_give_the_same_logits(name: str) -> None:
    """Run with torch 2.14.1 + torchvision 0.29.1 in a separate venv: passed."""
    tv = getattr(_torchvision_models(), name)(weights=None, num_classes=10).eval()
    ours = create_model(name, 10).eval()
    theirs = tv.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.items()
    }
    ours.load_state_dict(theirs)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=1e-5)
