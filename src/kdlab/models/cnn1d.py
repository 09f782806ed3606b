"""Small 1-D CNNs for sequences ``(N, C, L)``: signals, sensor channels, spectra.

The 1-D twin of :class:`kdlab.models.small.SmallCNN`, with the same taps: ``stages.N``
(each conv block's output ``(N, C_n, L_n)``, post-ReLU), ``stages.N.conv`` and
``stages.N.bn`` (pre-activation), ``pool`` and ``fc:input`` (penultimate features
``(N, C)``). ``in_channels`` is the sequence's channel count C; any length L works
(global average pooling before the classifier).
"""

from __future__ import annotations

from torch import nn

from kdlab.models import register_model
from kdlab.models.small import SmallCNN


class SmallCNN1d(SmallCNN):
    """Conv1d-BN-ReLU stages (kernel 5 by default); stride 2 starts every later stage."""

    def __init__(self, num_classes: int, in_channels: int = 1, **kwargs: object) -> None:
        kwargs.setdefault("kernel_size", 5)
        super().__init__(num_classes, in_channels, dims=1, **kwargs)  # type: ignore[arg-type]


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
