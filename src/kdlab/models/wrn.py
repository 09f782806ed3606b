"""Wide ResNets (Zagoruyko & Komodakis, arXiv 1605.07146) for CIFAR, as used by RepDistiller.

``wrn_D_K``: depth ``D = 6n + 4``, widen factor ``K``: a 3x3 stem conv of 16 channels, then
three groups (``block1..3``) of ``n`` pre-activation blocks (BN-ReLU-conv-BN-ReLU-conv)
with ``16K, 32K, 64K`` channels and strides 1, 2, 2, then ``bn1``, ``relu``, global
average pooling and ``fc``. A block that changes the channel count has a 1x1 conv
shortcut (``convShortcut``) fed by its pre-activated input. Parameter names match
RepDistiller's ``models/wrn.py`` (``block1.layer.0.bn1`` ...), so its checkpoints load.

Differences from the reference that change no parameter and no output on 32x32 inputs:
``nn.AdaptiveAvgPool2d(1)`` instead of ``avg_pool2d(8)`` (so 8x8 inputs work too),
out-of-place ReLUs (taps stay valid), a stem taking ``in_channels``.

Useful taps (32x32 input, wrn_40_2):

- ``conv1`` (16x32x32), ``block1`` (32x32x32), ``block2`` (64x16x16), ``block3``
  (128x8x8): group outputs. Being pre-activation blocks, these are sums *before* any
  BN-ReLU.
- ``block2.layer.0.bn1``, ``block3.layer.0.bn1``, ``bn1``: the BN applied to the
  previous group's output right before a ReLU, i.e. RepDistiller's ``preact`` features
  (what its AB uses) and its ``get_bn_before_relu`` modules.
- ``relu`` (128x8x8): the final activated map; ``fc:input`` the penultimate features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models import register_model
from kdlab.models._init import reference_init


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus an identity or 1x1-conv shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.equal_in_out = cin == cout
        self.convShortcut: nn.Module | None = None  # noqa: N815 - reference param name
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        # Identity shortcuts carry the raw input; projections see the activated one.
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A group of blocks, wrapped in ``.layer`` like the reference (checkpoint names)."""

    def __init__(self, n: int, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                PreActBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, dropout)
                for i in range(n)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """``conv1``, ``block1..3``, ``bn1``, ``relu``, ``avgpool``, ``fc``."""

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, dropout)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, dropout)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        reference_init(self, linear_std=None)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _factory(name: str, depth: int, widen: int):  # noqa: ANN202
    def factory(num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
        return WideResNet(depth, widen, num_classes, in_channels, dropout)

    factory.__name__ = name
    factory.__doc__ = f"WRN-{depth}-{widen} (RepDistiller {name}); ``dropout`` inside blocks."
    return factory


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    register_model(f"wrn_{_depth}_{_widen}")(_factory(f"wrn_{_depth}_{_widen}", _depth, _widen))
