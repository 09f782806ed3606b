"""``at``: Zagoruyko & Komodakis, Paying More Attention to Attention (ICLR 2017)."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdlab.functional.features import attention_distance, attention_map
from kdlab.methods._features import FeatureParams, probed_pairs, require_maps
from kdlab.methods.base import Shapes, StepContext, Term


class ATParams(FeatureParams):
    p: float = Field(2.0, gt=0.0, description="attention map exponent: sum_c |A_c|^p")
    squared: bool = Field(
        True, description="squared distance (authors' code) or the plain L2 norm of eq. 2"
    )


class AttentionTransfer(Term[ATParams]):
    """Activation-based attention transfer (arXiv:1612.03928), summed over layer pairs.

    ``Q = vec(sum_c |A_c|^p)`` (p = 2), L2-normalised; the loss is eq. 2,
    ``beta/2 * sum_j mean_n ||Q_s/||Q_s|| - Q_t/||Q_t|| ||^2 / (H*W)``, with beta the
    term's weight (default 1000, the paper's and the reference protocol's). The paper
    divides beta by the attention map size and the batch size, and its code squares the
    difference: we follow both (``squared: false`` for the unsquared norm of eq. 2).
    RepDistiller and mdistiller compute the same mean but drop the 1/2, so their
    weight 1000 equals our weight 2000.

    Channel counts may differ freely. When a pair's spatial sizes differ, the larger
    attention map is average-pooled to the smaller one (RepDistiller pools the feature
    maps before squaring instead; pooling the attention keeps it an average of energy).
    """

    method = "at"
    default_weight = 1000.0

    def __init__(self, params: ATParams) -> None:
        super().__init__(params)

    def setup(self, shapes: Shapes) -> None:
        for s, t, s_shape, t_shape in probed_pairs(self, shapes):
            require_maps(self, s, t, s_shape, t_shape)

    def forward(self, ctx: StepContext) -> Tensor:
        total = ctx.student.logits.new_zeros(())
        for s, t in self.paired_taps():
            qs, qt = attention_map(ctx.s(s), self.params.p), attention_map(ctx.t(t), self.params.p)
            if qs.shape[1:] != qt.shape[1:]:
                size = (min(qs.shape[1], qt.shape[1]), min(qs.shape[2], qt.shape[2]))
                qs = F.adaptive_avg_pool2d(qs.unsqueeze(1), size).squeeze(1)
                qt = F.adaptive_avg_pool2d(qt.unsqueeze(1), size).squeeze(1)
            total = total + attention_distance(qs.flatten(1), qt.flatten(1), self.params.squared)
        return 0.5 * total
