"""Small trainable heads of the relation methods: embeddings (CRD, CC) and VID regressors.

They live inside a term, so they train with the student, are saved with it, and only
ever see detached teacher features: no gradient reaches the teacher.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Embed(nn.Module):
    """Linear projection of flattened features followed by L2 normalisation.

    CRD's ``g_S`` / ``g_T`` (Tian et al., sec. 3.4: "a linear transformation ... then
    L2-normalised"), also used by RepDistiller's CC.
    """

    def __init__(self, in_dim: int, out_dim: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.reshape(x.shape[0], -1)), p=2, dim=1)


class VIDRegressor(nn.Module):
    """VID's mean ``mu(s)``: three bias-free 1x1 convs with ReLUs between them.

    The paper (Ahn et al.) regresses the teacher's layer from the student's with a small
    1x1-convolution network; this stack is RepDistiller's concrete choice.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
