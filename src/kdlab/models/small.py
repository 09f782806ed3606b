"""Small models for small inputs (digits 8x8, MNIST-like): a CNN family and an MLP.

Taps of interest: ``stages.N`` (each conv block's output, post-ReLU), ``stages.N.conv``
and ``stages.N.bn`` (pre-activation), ``pool``, ``fc:input`` (penultimate features).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdlab.models import register_model

# Layers by spatial rank: 2 for images (N, C, H, W), 1 for sequences (N, C, L).
_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
_POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}


class ConvBlock(nn.Module):
    def __init__(
        self, cin: int, cout: int, stride: int = 1, kernel_size: int = 3, dims: int = 2
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        pad = kernel_size // 2  # 'same' size at stride 1
        self.conv = _CONV[dims](cin, cout, kernel_size, stride=stride, padding=pad, bias=False)
        self.bn = _BN[dims](cout)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stages; a stride-2 block starts every stage after the first.

    ``dims=1`` makes the 1-D twin for sequences (:mod:`kdlab.models.cnn1d`).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64),
        depth: int = 1,
        dropout: float = 0.0,
        kernel_size: int = 3,
        dims: int = 2,
    ) -> None:
        super().__init__()
        if dims not in _CONV:
            raise ValueError(f"dims must be 1 (sequences) or 2 (images), got {dims!r}")
        self.dims = dims
        stages = []
        cin = in_channels
        for i, w in enumerate(widths):
            blocks = [ConvBlock(cin, w, 1 if i == 0 else 2, kernel_size, dims)]
            blocks += [ConvBlock(w, w, 1, kernel_size, dims) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks) if depth > 1 else blocks[0])
            cin = w
        self.stages = nn.Sequential(*stages)
        self.pool = _POOL[dims](1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != self.dims + 2:
            layout = "(N, C, L) sequences" if self.dims == 1 else "(N, C, H, W) images"
            hint = " (for .npz data set data.options.layout: ncl)" if self.dims == 1 else ""
            raise ValueError(
                f"{type(self).__name__} takes {layout}, got a tensor of shape "
                f"{tuple(x.shape)}{hint}"
            )
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
