"""The weight initialisation the CIFAR reference models (RepDistiller) use."""

from __future__ import annotations

import math

from torch import nn


def reference_init(model: nn.Module, linear_std: float | None = 0.01) -> None:
    """Convs ``N(0, 2 / fan_out)`` with zero bias, BN ``(1, 0)``, linear bias 0.

    Linear weights get ``N(0, linear_std)``, or keep PyTorch's default when
    ``linear_std`` is None (the WRN reference does that).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
