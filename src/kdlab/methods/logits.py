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


class LogitRegression(Term[LogitParams]):
    """L2 regression of the teacher's logits (arXiv:1312.6184, eq. 1).

    The paper's loss is ``1/(2N) sum_n ||z_s(n) - z_t(n)||^2``, summed over classes, and
    it trains the mimic on this loss alone (no labels).

    Departure, the class count: summed over classes the gradient on the shared features
    grows with the number of classes. The default ``reduction: mean`` is the mean over
    classes (``F.mse_loss``, as torchdistill and Knowledge-Distillation-Zoo compute it),
    ``2 / num_classes`` times the paper's value; ``reduction: paper`` keeps the sum.

    Default weight 0.1, for use beside ``ce`` at 1 like every other method here. Alone,
    the regression left small students far below training on labels (a 28x28 dataset
    outside this repository: -10 points with a spread of 9 over seeds; Fashion-MNIST
    cnn3 / resnet8 -> cnn_tiny, 8 epochs: -2.4 / -3.3 with the sum, -3.6 with the mean,
    -4.1 / -5.3 with centred logits); beside ``ce`` at weight 1 it swung from -4.7 to
    +1.4 between the two pairs; at 0.1, +1.3 / -0.2 (one seed each). For the paper's
    mimic-only training, drop ``ce`` and raise the weight (it then only scales the step).
    """

    method = "logits"
    default_weight = 0.1

    def forward(self, ctx: StepContext) -> Tensor:
        assert ctx.teacher is not None
        p: LogitParams = self.params  # type: ignore[assignment]
        return logit_regression(ctx.student.logits, ctx.teacher.logits, p.reduction)
