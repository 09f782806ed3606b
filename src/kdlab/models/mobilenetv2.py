"""MobileNetV2 (Sandler et al., arXiv 1801.04381), CIFAR variant as used by RepDistiller.

RepDistiller's "MobileNetV2" (``mobile_half``) is expansion ratio 6 and width multiplier
0.5; that is this model's default. Structure: ``conv1`` (3x3 conv, stride 2, BN, ReLU, 32
x width channels), seven stages ``blocks.0..6`` of inverted residual blocks
(expansion t, channels c x width, repeats n, first stride s)::

    t  c    n  s
    1  16   1  1
    6  24   2  1
    6  32   3  2
    6  64   4  2
    6  96   3  1
    6  160  3  2
    6  320  1  1

then ``conv2`` (1x1 conv to 1280 channels, or 1280 x width when width > 1, BN, ReLU),
global average pooling and ``classifier`` (``classifier.0`` is the linear layer). A block
is ``conv`` = (1x1 expand, BN, ReLU, 3x3 depthwise, BN, ReLU, 1x1 project, BN) with an
identity shortcut when stride is 1 and channels are unchanged. Parameter names match
RepDistiller's ``models/mobilenetv2.py`` so its checkpoints load.

Differences that change no parameter and no output on 32x32 inputs: global pooling is
``nn.AdaptiveAvgPool2d(1)`` (the reference's ``AvgPool2d(2, ceil_mode=True)`` on the
final 2x2 map is the same mean), so any input size works (8x8 digits with
``in_channels=1``); ReLUs are out-of-place.

Useful taps (32x32 input, width 0.5): ``conv1`` (16x16x16), ``blocks.1`` (12x16x16),
``blocks.2`` (16x8x8), ``blocks.4`` (48x4x4), ``blocks.6`` (160x2x2): the stage outputs
RepDistiller returns as features, with or without ``preact`` (linear bottlenecks end
without a ReLU), so also what its AB uses; ``blocks.1.1.conv.7`` etc.: the last BN of a
stage's residual branch (RepDistiller's ``get_bn_before_relu``); ``conv2`` (1280x2x2);
``classifier:input`` penultimate features (1280).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlab.models import register_model
from kdlab.models._init import reference_init

# (expansion, channels, repeats, first stride); expansion None = the model's ratio
_SETTING: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """``conv1``, ``blocks.0..6``, ``conv2``, ``avgpool``, ``classifier``."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width_mult: float = 0.5,
        expansion: int = 6,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        cin = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels, cin, 3, 2)
        stages = []
        for t, c, n, s in _SETTING:
            cout = int(c * width_mult)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t or expansion))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(stages)
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(cin, self.last_channel, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        reference_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        x = self.conv2(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


@register_model("mobilenetv2")
def mobilenetv2(
    num_classes: int, in_channels: int = 3, width_mult: float = 0.5, expansion: int = 6
) -> nn.Module:
    """CIFAR MobileNetV2; the defaults (width 0.5, expansion 6) are RepDistiller's."""
    return MobileNetV2(num_classes, in_channels, width_mult, expansion)
