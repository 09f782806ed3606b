"""ImageNet ResNets (He et al., arXiv 1512.03385, table 1): ``resnet18``, ``resnet34``,
``resnet50``, as torchvision builds them.

A 7x7 stride-2 stem (``conv1``, ``bn1``, ``relu``, ``maxpool``), four stages
``layer1..4`` of 64, 128, 256, 512 channels (x4 for the bottleneck ResNet-50, stride 2 in
the 3x3 conv of each stage's first block from ``layer2`` on: "ResNet v1.5"), global
average pooling and ``fc``. Parameter names and shapes are torchvision's, so its
``state_dict``s load as they are; the parameter counts at 1000 classes (11,689,512 /
21,797,672 / 25,557,032) are pinned in ``tests/test_models_imagenet.py``. The CIFAR
ResNets (``resnet20``, ``resnet32x4``, ...) are another family with other names.

Differences from torchvision that change no parameter and no output: ReLUs are
out-of-place, and each block applies its last ReLU through its own ``relu`` module, so
``layerK.B.relu:input`` is that block's pre-activation (AB's and RepDistiller's
``preact`` features); ``in_channels`` sets the stem's input channels.

Useful taps (224x224 input): ``layer1`` (64x56x56), ``layer2`` (128x28x28), ``layer3``
(256x14x14), ``layer4`` (512x7x7; 2048 for resnet50), ``fc:input`` (512 / 2048):
what mdistiller's ImageNet ResNets return as features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models import register_model
from kdlab.models.resnet import BasicBlock, projection


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here), 1x1 expand x4, plus shortcut, then ``relu``."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = projection(cin, cout, stride)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ImageNetResNet(nn.Module):
    """``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1..4``, ``avgpool``, ``fc``."""

    def __init__(
        self, bottleneck: bool, blocks: tuple[int, ...], num_classes: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        stages = []
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stride = 1 if i == 0 else 2
            layer = []
            for b in range(n):
                if bottleneck:
                    layer.append(Bottleneck(cin, width, stride if b == 0 else 1))
                    cin = width * Bottleneck.expansion
                else:
                    layer.append(BasicBlock(cin, width, stride if b == 0 else 1))
                    cin = width
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():  # torchvision's initialisation (Linear keeps PyTorch's)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model("resnet18")
def resnet18(num_classes: int, in_channels: int = 3) -> nn.Module:
    """ImageNet ResNet-18 (torchvision's layout; 11.7 M parameters at 1000 classes)."""
    return ImageNetResNet(False, (2, 2, 2, 2), num_classes, in_channels)


@register_model("resnet34")
def resnet34(num_classes: int, in_channels: int = 3) -> nn.Module:
    """ImageNet ResNet-34 (torchvision's layout; 21.8 M parameters at 1000 classes)."""
    return ImageNetResNet(False, (3, 4, 6, 3), num_classes, in_channels)


@register_model("resnet50")
def resnet50(num_classes: int, in_channels: int = 3) -> nn.Module:
    """ImageNet ResNet-50, bottleneck v1.5 (torchvision's; 25.6 M parameters at 1000)."""
    return ImageNetResNet(True, (3, 4, 6, 3), num_classes, in_channels)
