"""ShuffleNetV1 (Zhang et al., arXiv 1707.01083), CIFAR variant as used by RepDistiller.

Stem: 1x1 conv to 24 channels (``conv1``, ``bn1``, ``relu``; no stride, no max pool),
then three stages ``layer1..3`` with 240, 480, 960 output channels and 4, 8, 4 blocks
(``groups=3`` by default), global average pooling and ``linear``. A block is a
bottleneck: 1x1 group conv (plain conv when its input is the 24-channel stem) to a
quarter of the output width, channel ``shuffle1``, 3x3 depthwise conv, 1x1 group conv.
The first block of a stage has stride 2, a 3x3 average-pool shortcut and concatenates
it (so its conv branch produces ``out - in`` channels); the others add an identity
shortcut. Parameter names match RepDistiller's ``models/ShuffleNetv1.py``.

Differences that change no parameter and no output on 32x32 inputs: adaptive global
pooling instead of ``avg_pool2d(4)`` (so 8x8 inputs work), a ``relu`` module ending each
block (so its pre-activation is tappable), a stem taking ``in_channels``.

Useful taps (32x32 input): ``relu`` (stem, 24x32x32), ``layer1`` (240x16x16), ``layer2``
(480x8x8), ``layer3`` (960x4x4): stage outputs; ``layer1.3.relu:input`` (and
``layer2.7``, ``layer3.3``): the last block's pre-activation, RepDistiller's ``preact``
features; ``linear:input``: penultimate features (960).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models import register_model


class ChannelShuffle(nn.Module):
    """(N, g*c, H, W) -> interleave the ``g`` groups' channels."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = self.groups
        return x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int, stem_in: bool) -> None:
        super().__init__()
        self.stride = stride
        mid = cout // 4
        g1 = 1 if stem_in else groups  # the 24-channel stem is not split into groups
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle1 = ChannelShuffle(g1)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.shuffle1(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return self.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(nn.Module):
    """``conv1``, ``bn1``, ``relu``, ``layer1..3``, ``avgpool``, ``linear``."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        out_planes: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        stem = 24
        self.conv1 = nn.Conv2d(in_channels, stem, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        cin = stem
        stages = []
        for i, (cout, n) in enumerate(zip(out_planes, num_blocks, strict=True)):
            # The stride-2 first unit concatenates its input, so its branch adds cout - cin.
            units = [ShuffleUnit(cin, cout - cin, 2, groups, stem_in=i == 0)]
            units += [ShuffleUnit(cout, cout, 1, groups, stem_in=False) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


@register_model("shufflenetv1")
def shufflenetv1(num_classes: int, in_channels: int = 3, groups: int = 3) -> nn.Module:
    """CIFAR ShuffleNetV1 (RepDistiller ``ShuffleV1``: stages 240/480/960, groups 3)."""
    return ShuffleNetV1(num_classes, in_channels, groups=groups)
