"""Small 1-D CNNs for sequences ``(N, C, L)``: signals, sensor channels, spectra.

The 1-D twin of :class:`kdlab.models.small.SmallCNN`, with the same taps: ``stages.N``
(each conv block's output ``(N, C_n, L_n)``, post-ReLU), ``stages.N.conv`` and
``stages.N.bn`` (pre-activation), ``pool`` and ``fc:input`` (penultimate features
``(N, C)``). ``in_channels`` is the sequence's channel count C; any length L works
(global average pooling before the classifier).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdlab.models import register_model


class ConvBlock1d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        pad = kernel_size // 2  # 'same' length at stride 1
        self.conv = nn.Conv1d(cin, cout, kernel_size, stride=stride, padding=pad, bias=False)
        self.bn = nn.BatchNorm1d(cout)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class SmallCNN1d(nn.Module):
    """Conv1d-BN-ReLU stages; a stride-2 block starts every stage after the first."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64),
        depth: int = 1,
        kernel_size: int = 5,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        stages = []
        cin = in_channels
        for i, w in enumerate(widths):
            blocks = [ConvBlock1d(cin, w, kernel_size, stride=1 if i == 0 else 2)]
            blocks += [ConvBlock1d(w, w, kernel_size) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks) if depth > 1 else blocks[0])
            cin = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError(
                f"SmallCNN1d takes sequences (N, C, L), got a tensor of shape {tuple(x.shape)}"
                " (for .npz data set data.options.layout: ncl)"
            )
        x = self.pool(self.stages(x))
        return self.fc(self.dropout(torch.flatten(x, 1)))


_SIZES = {
    "cnn1d_tiny": ((8, 16), 1),
    "cnn1d_small": ((16, 32), 1),
    "cnn1d_medium": ((32, 64, 128), 1),
    "cnn1d_large": ((64, 128, 256), 2),
}


def _factory(widths: tuple[int, ...], depth: int):  # noqa: ANN202
    def factory(num_classes: int, in_channels: int = 1, **kwargs: object) -> nn.Module:
        kwargs.setdefault("widths", widths)
        kwargs.setdefault("depth", depth)
        return SmallCNN1d(num_classes, in_channels, **kwargs)  # type: ignore[arg-type]

    factory.__doc__ = f"SmallCNN1d widths {widths}, depth {depth}: sequences (N, C, L)."
    return factory


for _name, (_widths, _depth) in _SIZES.items():
    register_model(_name)(_factory(_widths, _depth))


@register_model("cnn1d")
def cnn1d(num_classes: int, in_channels: int = 1, **kwargs: object) -> nn.Module:
    """A SmallCNN1d with explicit ``widths``, ``depth``, ``kernel_size`` and ``dropout``."""
    return SmallCNN1d(num_classes, in_channels, **kwargs)  # type: ignore[arg-type]
