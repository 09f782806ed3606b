"""``sp``: Tung & Mori, Similarity-Preserving Knowledge Distillation."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdlab.functional.relations import similarity_preserving_loss
from kdlab.methods.base import Shapes, StepContext, Term, TermParams


class SPParams(TermParams):
    student: list[str] = Field(min_length=1, description="student layers, paired with teacher")
    teacher: list[str] = Field(min_length=1, description="teacher layers, paired with student")


class SimilarityPreserving(Term[SPParams]):
    """Match the row-normalised ``b x b`` activation similarity matrices of layer pairs.

    Paper: Tung & Mori, Similarity-Preserving Knowledge Distillation, ICCV 2019
    (arXiv:1907.09682).

    ``G = Q Q^T`` (Q: a layer's activations flattened per sample), each row L2-normalised;
    loss ``sum over pairs of ||G_t - G_s||_F^2 / b^2`` (eq. 4,
    :func:`kdlab.functional.relations.similarity_preserving_loss`). Channels and spatial
    sizes may differ between the paired layers; no adapter is needed.

    Defaults: weight 3000 beside ``ce`` at 1 (the CIFAR-100 reference protocol; the
    paper's gamma is 3000 on CIFAR-10 too). The paper pairs the ends of the last stages;
    RepDistiller uses the single pair of last-stage outputs before pooling (its
    ``feat[-2]``), which the cifar100 recipes follow.
    """

    method = "sp"
    default_weight = 3000.0

    def setup(self, shapes: Shapes) -> None:
        self.paired_taps()  # a clear error now if the tap counts differ

    def forward(self, ctx: StepContext) -> Tensor:
        total = ctx.student.logits.new_zeros(())
        for s, t in self.paired_taps():
            total = total + similarity_preserving_loss(ctx.s(s), ctx.t(t))
        return total
