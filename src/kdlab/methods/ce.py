"""``ce``: cross-entropy on the labels (the student's supervised loss)."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdlab.functional import cross_entropy
from kdlab.methods.base import StepContext, Term, TermParams


class CEParams(TermParams):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


class CrossEntropy(Term[CEParams]):
    """Cross-entropy on hard labels, optionally label-smoothed.

    Formula: ``-mean_n log softmax(z_s(n))[y_n]`` (smoothed: Szegedy et al.,
    arXiv:1512.00567). Default weight 1; the reference KD recipe uses 0.1.
    """

    method = "ce"
    needs_teacher = False

    def forward(self, ctx: StepContext) -> Tensor:
        return cross_entropy(ctx.student.logits, ctx.targets, self.params.label_smoothing)
