"""``logits``: Ba & Caruana, Do Deep Nets Really Need to be Deep? (mimic learning)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from kdlab.functional import logit_regression
from kdlab.methods.base import StepContext, Term, TermParams


class LogitParams(TermParams):
    reduction: Literal["mean", "paper"] = Field(
        "mean", description="'mean' over classes (default) or the paper's half sum over them"
    )


class LogitRegression(Term):
    """L2 regression of the teacher's logits (arXiv:1312.6184, eq. 1).

    The paper's loss is ``1/(2N) sum_n ||z_s(n) - z_t(n)||^2``, summed over classes, and
    it trains the mimic on this loss alone (no labels): weight 1, no ``ce`` term.

    Departure, the class count: summed over classes the gradient on the shared features
    grows with the number of classes, and with 10 classes it is 9 to 12 times
    cross-entropy's on a fresh student (Fashion-MNIST and digits pairs, SGD lr 0.05):
    the student learned 2 to 10 points less than from labels, with a spread of 9 points
    over seeds on one 28x28 dataset. The default ``reduction: mean`` is the mean over
    classes (``F.mse_loss``, as torchdistill and Knowledge-Distillation-Zoo compute
    it), ``2 / num_classes`` times the paper's value; ``reduction: paper`` keeps the sum.
    """

    method = "logits"
    Params = LogitParams

    def forward(self, ctx: StepContext) -> Tensor:
        assert ctx.teacher is not None
        p: LogitParams = self.params  # type: ignore[assignment]
        return logit_regression(ctx.student.logits, ctx.teacher.logits, p.reduction)
