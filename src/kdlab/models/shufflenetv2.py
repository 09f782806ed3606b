"""ShuffleNetV2 (Ma et al., arXiv 1807.11164), CIFAR variant as used by RepDistiller.

Stem: 1x1 conv to 24 channels (``conv1``, ``bn1``, ``relu``; no stride, no max pool),
three stages ``layer1..3``, each a stride-2 ``DownBlock`` followed by ``num_blocks``
``BasicBlock``s, then ``conv2`` (1x1 conv, ``bn2``, ``relu2``), global average pooling
and ``linear``. ``net_size`` picks the widths (RepDistiller's ``ShuffleV2`` is 1)::

    net_size  stage channels     conv2   blocks
    0.2       40, 80, 160        512     3, 3, 3
    0.3       40, 80, 160        512     3, 7, 3
    0.5       48, 96, 192        1024    3, 7, 3
    1         116, 232, 464      1024    3, 7, 3
    1.5       176, 352, 704      1024    3, 7, 3
    2         224, 488, 976      2048    3, 7, 3

A BasicBlock splits its channels in half, runs 1x1 conv-BN-ReLU, 3x3 depthwise conv-BN,
1x1 conv-BN-ReLU on the second half, concatenates and shuffles (2 groups). A DownBlock
runs two stride-2 branches on the whole input and concatenates them. Parameter names match
RepDistiller's ``models/ShuffleNetv2.py``.

Differences that change no parameter and no output on 32x32 inputs: adaptive global
pooling instead of ``avg_pool2d(4)`` (so 8x8 inputs work), the branch's last ReLU is a
module ``relu`` (tappable pre-activation), a stem taking ``in_channels``.

Useful taps (32x32 input, net_size 1): ``relu`` (stem, 24x32x32), ``layer1``
(116x16x16), ``layer2`` (232x8x8), ``layer3`` (464x4x4): stage outputs;
``layer1.3.bn3``: the last block's branch before its ReLU (RepDistiller's ``preact``
concatenates the untouched half in front of it); ``relu2`` (1024x4x4);
``linear:input``: penultimate features (1024).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models import register_model
from kdlab.models.shufflenetv1 import ChannelShuffle

_CONFIGS: dict[float, tuple[tuple[int, int, int, int], tuple[int, int, int]]] = {
    0.2: ((40, 80, 160, 512), (3, 3, 3)),
    0.3: ((40, 80, 160, 512), (3, 7, 3)),
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1.0: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2.0: ((224, 488, 976, 2048), (3, 7, 3)),
}


class BasicBlock(nn.Module):
    """Channel split; the second half goes through the branch; concat; shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.relu = nn.ReLU()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1] // 2
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = self.relu(self.bn3(self.conv3(out)))
        return self.shuffle(torch.cat([x1, out], 1))


class DownBlock(nn.Module):
    """Two stride-2 branches over the whole input, concatenated and shuffled."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        # left: depthwise 3x3 stride 2, BN, 1x1 conv, BN, ReLU
        self.conv1 = nn.Conv2d(cin, cin, 3, stride=2, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right: 1x1 conv, BN, ReLU, depthwise 3x3 stride 2, BN, 1x1 conv, BN, ReLU
        self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    """``conv1``, ``bn1``, ``relu``, ``layer1..3``, ``conv2``, ``bn2``, ``relu2``, ``linear``."""

    def __init__(self, num_classes: int, in_channels: int = 3, net_size: float = 1.0) -> None:
        super().__init__()
        if float(net_size) not in _CONFIGS:
            raise ValueError(f"net_size must be one of {sorted(_CONFIGS)}, got {net_size}")
        widths, blocks = _CONFIGS[float(net_size)]
        stem = 24
        self.conv1 = nn.Conv2d(in_channels, stem, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        cin = stem
        stages = []
        for cout, n in zip(widths[:3], blocks, strict=True):
            units = [DownBlock(cin, cout)] + [BasicBlock(cout) for _ in range(n)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(cin, widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


@register_model("shufflenetv2")
def shufflenetv2(num_classes: int, in_channels: int = 3, net_size: float = 1.0) -> nn.Module:
    """CIFAR ShuffleNetV2 (RepDistiller ``ShuffleV2`` is ``net_size=1``)."""
    return ShuffleNetV2(num_classes, in_channels, net_size)
