"""``cqd``: Su & Maji, Adapting Models to Signal Degradation using Distillation."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdlab.functional.cqd import soft_cross_entropy
from kdlab.methods.base import StepContext, Term, TermParams


class CQDParams(TermParams):
    T: float = Field(4.0, gt=0.0, description="softmax temperature of both models")
    student_view: str = Field("degraded", description="the degraded view the student sees")


class CrossQualityDistillation(Term):
    """Cross quality distillation (BMVC 2017, arXiv:1604.00433).

    The teacher sees the clean image ``x`` (``teacher_view``, default the batch as
    given), the student a degraded ``g(x)`` (``student_view``, default a view named
    ``degraded`` that the recipe defines with ``distill.views``). The paper's objective::

        sum_i  CE(y_i, softmax(f(g(x_i))))  +  lambda * CE(softmax(p(x_i)/T), softmax(f(g(x_i))/T))

    This term is the second half (:func:`kdlab.functional.cqd.soft_cross_entropy`); the
    first is a ``ce`` term whose ``student_view`` is the same degraded view. The paper's
    values of ``T`` and ``lambda`` could not be confirmed here, so the defaults (``T = 4``,
    weight 1 beside ``ce`` at 1) are kdlab's starting point, to be tuned on the degraded
    validation split. The objective as written above is a cross-entropy (the KL of the
    ``kd`` term plus the teacher's entropy: same gradient) with no ``T^2`` factor; a
    weight of ``T^2`` gives Hinton's gradient scale. Other toolkits
    (RepDistiller, torchdistill, mdistiller) have no CQD; torchdistill can emulate it
    only by running ``kd`` with a different input pipeline per model.
    """

    method = "cqd"
    Params = CQDParams
    default_weight = 1.0

    def forward(self, ctx: StepContext) -> Tensor:
        assert ctx.teacher is not None
        return soft_cross_entropy(ctx.student.logits, ctx.teacher.logits, self.params.T)
