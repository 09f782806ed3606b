"""``rkd``: Park et al., Relational Knowledge Distillation (distance and angle)."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdlab.functional.relations import rkd_loss
from kdlab.methods.base import Shapes, StepContext, Term, TermParams


class RKDParams(TermParams):
    student: list[str] = Field(default_factory=lambda: ["fc:input"], min_length=1)
    teacher: list[str] = Field(default_factory=lambda: ["fc:input"], min_length=1)
    distance_weight: float = Field(25.0, ge=0.0, description="lambda_RKD-D of the paper")
    angle_weight: float = Field(50.0, ge=0.0, description="lambda_RKD-A of the paper")


class RelationalKD(Term[RKDParams]):
    """Transfer mutual relations: normalised pairwise distances and triplet angles.

    Paper: Park, Kim, Lu & Cho, Relational Knowledge Distillation, CVPR 2019
    (arXiv:1904.05068).

    ``L = distance_weight * Huber(psi_D^t, psi_D^s) + angle_weight * Huber(psi_A^t, psi_A^s)``
    with ``psi_D(i, j) = ||f_i - f_j|| / mu`` (``mu``: mean distance in the batch) and
    ``psi_A(i, j, k) = cos`` of the angle at ``f_j``
    (:func:`kdlab.functional.relations.rkd_loss`), on the penultimate features by
    default; several tap pairs are summed.

    Defaults: ``distance_weight`` 25 and ``angle_weight`` 50 inside the term, term weight
    1. These are the paper's lambda_D and lambda_A (used for its metric-learning and
    classification experiments) and also RepDistiller's inner weights, so the reference
    protocol's "RKD 1" is exactly this combination: both the paper and the reference
    table hold. Both Huber losses average over the batch's pairs / triplets (the
    authors' code; the paper writes sums).
    """

    method = "rkd"
    default_weight = 1.0

    def setup(self, shapes: Shapes) -> None:
        self.paired_taps()

    def forward(self, ctx: StepContext) -> Tensor:
        p = self.params
        total = ctx.student.logits.new_zeros(())
        for s, t in self.paired_taps():
            total = total + rkd_loss(ctx.s(s), ctx.t(t), p.distance_weight, p.angle_weight)
        return total
