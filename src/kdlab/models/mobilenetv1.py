"""MobileNetV1 (Howard et al., arXiv 1704.04861), width 1.0: the ImageNet student of
the ResNet50 -> MobileNetV1 tables of CRD and mdistiller.

Layout and parameter names follow mdistiller's ``models/imagenet/mobilenetv1.py`` so its
checkpoints load: ``model.0`` is a 3x3 stride-2 conv (32 channels) with BN and ReLU;
``model.1`` .. ``model.13`` are depthwise-separable blocks (3x3 depthwise conv, BN, ReLU,
1x1 pointwise conv, BN, ReLU) to 64, 128, 128, 256, 256, 512 (x6), 1024, 1024 channels
(stride 2 in blocks 2, 4, 6 and 12); ``model.14`` is the global average pool; ``fc``
classifies. 4,231,976 parameters at 1000 classes (pinned in the tests). Weights keep
PyTorch's default initialisation, as the reference does.

Differences that change no parameter and no output on 224x224 inputs: the pool is
``AdaptiveAvgPool2d(1)`` instead of ``AvgPool2d(7)`` (any input size works), ReLUs are
out-of-place, and ``in_channels`` sets the first conv's input.

Useful taps (224x224 input): ``model.3`` (128x56x56), ``model.5`` (256x28x28),
``model.11`` (512x14x14), ``model.13`` (1024x7x7): mdistiller's four features;
``model.3.5:input`` etc.: their pre-activations (the last BN's output);
``fc:input``: penultimate features (1024).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlab.models import register_model

# (output channels, stride) of the 13 depthwise-separable blocks
_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


def _conv_dw(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class MobileNetV1(nn.Module):
    """``model.0..14`` (stem, 13 separable blocks, pool) and ``fc``."""

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, 32, 2)]
        cin = 32
        for cout, stride in _BLOCKS:
            layers.append(_conv_dw(cin, cout, stride))
            cin = cout
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.model(x), 1))


@register_model("mobilenetv1")
def mobilenetv1(num_classes: int, in_channels: int = 3) -> nn.Module:
    """ImageNet MobileNetV1, width 1.0 (mdistiller's layout; 4.2 M parameters at 1000)."""
    return MobileNetV1(num_classes, in_channels)
