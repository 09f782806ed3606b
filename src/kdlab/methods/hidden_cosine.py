"""``hidden_cosine``: DistilBERT's cosine loss on hidden states (Sanh et al., 2019)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from kdlab.functional.transformer import hidden_cosine
from kdlab.methods._features import FeatureParams
from kdlab.methods._hidden import hidden_pairs, mapped, width_map
from kdlab.methods.base import Shapes, StepContext, Term


class HiddenCosineParams(FeatureParams):
    map: Literal["auto", "linear", "none"] = Field(
        "auto", description="'auto': a learned Linear only where widths differ"
    )


class HiddenCosine(Term[HiddenCosineParams]):
    """``1 - cos(h_s, h_t)`` per position, averaged, summed over tap pairs (arXiv:1910.01108).

    DistilBERT aligns the directions of the student's and teacher's last hidden states
    (its ``CosineEmbeddingLoss`` with target 1, weight 1 beside its soft-target and MLM
    losses); student and teacher share the width there. Where widths differ a learned
    ``Linear(H_s, H_t)`` maps the student's first (``map: auto``); ``linear`` always
    learns one, ``none`` requires equal widths. Taps: hidden states ``(N, L, H)`` such as
    ``bert.encoder.layer.K``, or pooled ``(N, H)`` such as ``classifier:input``.
    """

    method = "hidden_cosine"
    default_weight = 1.0

    def __init__(self, params: HiddenCosineParams) -> None:
        super().__init__(params)
        self.params: HiddenCosineParams = params
        self.maps = nn.ModuleList()

    def setup(self, shapes: Shapes) -> None:
        maps = []
        for s, t, h_s, h_t in hidden_pairs(self, shapes):
            if self.params.map == "none" and h_s != h_t:
                raise ValueError(
                    f"map: none needs equal widths; student tap {str(s)!r} has {h_s}, "
                    f"teacher tap {str(t)!r} {h_t}"
                )
            maps.append(width_map(h_s, h_t, self.params.map == "linear" or h_s != h_t))
        self.maps = nn.ModuleList(maps)

    def forward(self, ctx: StepContext) -> Tensor:
        total = ctx.student.logits.new_zeros(())
        for i, (s, t) in enumerate(self.paired_taps()):
            total = total + hidden_cosine(mapped(self.maps, i, ctx.s(s)), ctx.t(t))
        return total
