"""An example plugin: your own model, trained from a recipe and the command line.

Run it with the recipe beside it, from the repository root::

    kdlab train configs/digits/teacher.yaml          # a teacher -> runs/digits/teacher
    kdlab train examples/my_tinynet_kd.yaml          # the recipe lists this file under plugins:
    kdlab --plugin examples/my_models.py ls models   # or name the file on the command line

Loading this file runs it (like ``python examples/my_models.py``): a plugin is code, so
use only files you wrote or read (docs/security.md). Nothing in kdlab changes: the model
is an ordinary ``nn.Module`` and taps reach its layers by their dotted paths
(``body.1``, ``body.2``, ``head:input``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlab.models import register_model


def conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class TinyNet(nn.Module):
    """Three conv blocks (the second and third halve the size), global pooling, a head."""

    def __init__(self, num_classes: int, in_channels: int, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(in_channels, width, 1),
            conv_bn_relu(width, 2 * width, 2),
            conv_bn_relu(2 * width, 4 * width, 2),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.flatten(self.body(x).mean(dim=(2, 3)), 1))


# A factory takes num_classes and in_channels (kdlab passes both, from the data) and the
# recipe's kwargs (student.kwargs: {width: 8}).
@register_model("my_tinynet")
def my_tinynet(num_classes: int, in_channels: int = 1, width: int = 8) -> nn.Module:
    """The example plugin's TinyNet (examples/my_models.py)."""
    return TinyNet(num_classes, in_channels, width)
