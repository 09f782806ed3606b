"""CIFAR VGGs with batch norm (Simonyan & Zisserman, arXiv 1409.1556), as in RepDistiller.

Five conv groups ``block0..4`` of 3x3 conv (with bias) + BN (+ ReLU between convs), max
pooling after groups 0-2 (and after group 3 on inputs of 64 pixels or more, as the
reference does for 64x64), global average pooling and a single linear ``classifier``
(no VGG fully connected head). Convs per group (widths 64, 128, 256, 512, 512):

=====  =====================
vgg8   1, 1, 1, 1, 1
vgg11  1, 1, 2, 2, 2
vgg13  2, 2, 2, 2, 2
vgg16  2, 2, 3, 3, 3
vgg19  2, 2, 4, 4, 4
=====  =====================

RepDistiller's ``vgg8`` .. ``vgg19`` are these ``_bn`` variants; parameter names match its
``models/vgg.py`` (``block0.0.weight`` ...), so its checkpoints load. Differences that
change no parameter and no output on 32x32 inputs: the ReLU after each group is a module
(``relu0..relu4``) and all ReLUs are out-of-place; the first conv takes ``in_channels``.
``pool4`` is adaptive (as in the reference), so 8x8 inputs work too.

Useful taps (32x32 input):

- ``block1`` (128x16x16), ``block2`` (256x8x8), ``block3`` (512x4x4), ``block4``
  (512x4x4): group outputs *before* their ReLU, i.e. the last BN: RepDistiller's
  ``preact`` features (what its AB uses).
- ``relu0`` .. ``relu4``: the same after the ReLU (``relu0`` is 64x32x32).
- ``classifier:input``: penultimate features (512).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdlab.models import register_model
from kdlab.models._init import reference_init

_WIDTHS = (64, 128, 256, 512, 512)
_CONVS = {
    "vgg8": (1, 1, 1, 1, 1),
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}


def _group(cin: int, cout: int, n: int) -> nn.Sequential:
    """``n`` x (conv, BN, ReLU) without the last ReLU, so the group ends at a BN."""
    layers: list[nn.Module] = []
    for _ in range(n):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        cin = cout
    return nn.Sequential(*layers[:-1])


class CifarVGG(nn.Module):
    """``block0..4`` with ``relu0..4`` and ``pool0..4``, then ``classifier``."""

    def __init__(self, convs: Sequence[int], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        cin = in_channels
        for i, (w, n) in enumerate(zip(_WIDTHS, convs, strict=True)):
            setattr(self, f"block{i}", _group(cin, w, n))
            setattr(self, f"relu{i}", nn.ReLU())
            cin = w
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        reference_init(self)

    def forward(self, x: Tensor) -> Tensor:
        big = x.shape[2] >= 64
        x = self.pool0(self.relu0(self.block0(x)))
        x = self.pool1(self.relu1(self.block1(x)))
        x = self.pool2(self.relu2(self.block2(x)))
        x = self.relu3(self.block3(x))
        if big:  # the reference pools here only for 64x64 inputs
            x = self.pool3(x)
        x = self.relu4(self.block4(x))
        return self.classifier(torch.flatten(self.pool4(x), 1))


def _factory(name: str, convs: tuple[int, ...]):  # noqa: ANN202
    def factory(num_classes: int, in_channels: int = 3) -> nn.Module:
        return CifarVGG(convs, num_classes, in_channels)

    factory.__name__ = name
    factory.__doc__ = f"CIFAR {name} with batch norm, convs per group {convs} (RepDistiller)."
    return factory


for _name, _convs in _CONVS.items():
    register_model(_name)(_factory(_name, _convs))
