"""``logits``: Ba & Caruana, Do Deep Nets Really Need to be Deep? (mimic learning)."""

from __future__ import annotations

from torch import Tensor

from kdlab.functional import logit_regression
from kdlab.methods.base import StepContext, Term


class LogitRegression(Term):
    """L2 regression of the teacher's logits (arXiv:1312.6184, eq. 1).

    Loss: ``1/(2N) sum_n ||z_s(n) - z_t(n)||^2``, summed over classes. The paper trains
    the mimic on this loss alone (no labels): weight 1, no ``ce`` term. Common code
    (torchdistill, RepDistiller's variants) uses ``mse_loss``, a mean over classes,
    which is this times ``2/num_classes``; the scale only moves the best learning rate.
    """

    method = "logits"

    def forward(self, ctx: StepContext) -> Tensor:
        assert ctx.teacher is not None
        return logit_regression(ctx.student.logits, ctx.teacher.logits)
