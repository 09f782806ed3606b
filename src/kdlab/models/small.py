"""Small models for small inputs (digits 8x8, MNIST-like): a CNN family and an MLP.

Taps of interest: ``stages.N`` (each conv block's output, post-ReLU), ``stages.N.conv``
and ``stages.N.bn`` (pre-activation), ``pool``, ``fc:input`` (penultimate features).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdlab.models import register_model


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stages; a stride-2 block starts every stage after the first."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64),
        depth: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        stages = []
        cin = in_channels
        for i, w in enumerate(widths):
            blocks = [ConvBlock(cin, w, stride=1 if i == 0 else 2)]
            blocks += [ConvBlock(w, w) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks) if depth > 1 else blocks[0])
            cin = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.stages(x))
        return self.fc(self.dropout(torch.flatten(x, 1)))


class MLP(nn.Module):
    """Flatten, hidden Linear-ReLU layers (``hidden.N``), a linear classifier ``fc``."""

    def __init__(
        self, num_classes: int, in_features: int, hidden: Sequence[int] = (128, 64)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_features
        for h in hidden:
            layers.append(nn.Sequential(nn.Linear(d, h), nn.ReLU()))
            d = h
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(d, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.hidden(torch.flatten(x, 1)))


_CNN_SIZES = {
    "cnn_tiny": ((8, 16), 1),
    "cnn_small": ((16, 32), 1),
    "cnn_medium": ((32, 64, 128), 1),
    "cnn_large": ((64, 128, 256), 2),
}


def _cnn_factory(widths: tuple[int, ...], depth: int):  # noqa: ANN202
    def factory(num_classes: int, in_channels: int = 1, **kwargs: object) -> nn.Module:
        kwargs.setdefault("widths", widths)
        kwargs.setdefault("depth", depth)
        return SmallCNN(num_classes, in_channels, **kwargs)  # type: ignore[arg-type]

    blocks = f", {depth} conv blocks per stage" if depth > 1 else ""
    factory.__doc__ = f"SmallCNN with stage widths {widths}{blocks} (taps ``stages.N``)."
    return factory


for _name, (_widths, _depth) in _CNN_SIZES.items():
    register_model(_name)(_cnn_factory(_widths, _depth))


@register_model("cnn")
def cnn(num_classes: int, in_channels: int = 1, **kwargs: object) -> nn.Module:
    """A SmallCNN with explicit ``widths``, ``depth`` and ``dropout``."""
    return SmallCNN(num_classes, in_channels, **kwargs)  # type: ignore[arg-type]


@register_model("mlp")
def mlp(
    num_classes: int, in_channels: int = 1, image_size: int = 8, hidden: Sequence[int] = (128, 64)
) -> nn.Module:
    """An MLP on flattened ``in_channels x image_size x image_size`` inputs."""
    return MLP(num_classes, in_channels * image_size * image_size, hidden)
