"""``kd``: Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdlab.functional import kd_loss
from kdlab.methods.base import StepContext, Term, TermParams


class KDParams(TermParams):
    T: float = Field(4.0, gt=0.0, description="softmax temperature")


class KnowledgeDistillation(Term[KDParams]):
    """Soft targets at temperature T (arXiv:1503.02531).

    Loss: ``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``, averaged over the batch.
    Defaults: T = 4, weight 0.9 beside ``ce`` at 0.1 (the CIFAR-100 reference protocol;
    the paper weighs the hard loss "considerably lower"). The paper writes the soft loss
    as a cross-entropy; KL has the same gradient. RepDistiller and mdistiller use the
    same KL * T^2 form.
    """

    method = "kd"
    default_weight = 0.9

    def forward(self, ctx: StepContext) -> Tensor:
        assert ctx.teacher is not None
        return kd_loss(ctx.student.logits, ctx.teacher.logits, self.params.T)
