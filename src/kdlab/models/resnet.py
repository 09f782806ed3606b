"""CIFAR ResNets (He et al., arXiv 1512.03385, section 4.2) as used by RepDistiller.

``resnet{8,14,20,32,44,56,110}``: depth ``6n + 2``, a 3x3 stem of 16 channels and three
stages of ``n`` basic blocks with 16, 32, 64 channels (strides 1, 2, 2). ``resnet8x4`` and
``resnet32x4`` are 4x wider (stem 32, stages 64, 128, 256). Shortcuts that change shape
are a 1x1 conv + BN (option B). Parameter names match RepDistiller's ``models/resnet.py``,
so its checkpoints load with ``load_state_dict``; parameter counts for 100 classes are
pinned in ``tests/test_models.py``.

Differences from the reference, neither of which changes any parameter or output on
32x32 inputs: global average pooling is ``nn.AdaptiveAvgPool2d(1)`` instead of
``AvgPool2d(8)``, so the models also run on other input sizes (8x8 digits with
``in_channels=1``); every ReLU is out-of-place and the residual sum is not in-place, so
taps are never overwritten; the stem takes ``in_channels``.

Useful taps (32x32 input, resnet56; channels x4 for the x4 variants):

- ``relu`` (stem output, 16x32x32), ``layer1`` (16x32x32), ``layer2`` (32x16x16),
  ``layer3`` (64x8x8): stage outputs after the ReLU.
- ``layer2.8.relu:input``: the last block's pre-activation (residual sum before its
  ReLU), what AB and the preact features of RepDistiller use; ``layer2.8.bn2`` is the
  residual branch alone.
- ``fc:input``: penultimate features (64).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models import register_model


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def projection(cin: int, cout: int, stride: int) -> nn.Module | None:
    """The shortcut's 1x1 conv + BN where the shape changes (option B), else None."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus shortcut, then ``relu`` (tap ``relu:input`` = preact)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = projection(cin, cout, stride)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class CifarResNet(nn.Module):
    """Stem conv (``conv1``, ``bn1``, ``relu``), ``layer1..3``, ``avgpool``, ``fc``."""

    def __init__(
        self,
        depth: int,
        widths: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        if len(widths) != 4:
            raise ValueError(f"widths must be (stem, stage1, stage2, stage3), got {widths}")
        n = (depth - 2) // 6
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        cin = widths[0]
        stages = []
        for i, w in enumerate(widths[1:]):
            blocks = [BasicBlock(cin, w, stride=1 if i == 0 else 2)]
            blocks += [BasicBlock(w, w) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():  # the reference initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_SIZES: dict[str, tuple[int, tuple[int, int, int, int]]] = {
    "resnet8": (8, (16, 16, 32, 64)),
    "resnet14": (14, (16, 16, 32, 64)),
    "resnet20": (20, (16, 16, 32, 64)),
    "resnet32": (32, (16, 16, 32, 64)),
    "resnet44": (44, (16, 16, 32, 64)),
    "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)),
    "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
}


def _factory(name: str, depth: int, widths: tuple[int, ...]):  # noqa: ANN202
    def factory(num_classes: int, in_channels: int = 3) -> nn.Module:
        return CifarResNet(depth, widths, num_classes, in_channels)

    factory.__name__ = name
    factory.__doc__ = f"CIFAR ResNet, depth {depth}, widths {widths} (RepDistiller {name})."
    return factory


for _name, (_depth, _widths) in _SIZES.items():
    register_model(_name)(_factory(_name, _depth, _widths))
