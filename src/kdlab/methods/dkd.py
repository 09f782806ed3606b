"""``dkd``: Zhao et al., Decoupled Knowledge Distillation."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdlab.errors import DataError
from kdlab.functional.logits import dkd_loss
from kdlab.methods.base import StepContext, Term, TermParams


class DKDParams(TermParams):
    alpha: float = Field(1.0, ge=0.0, description="weight of target-class KD (TCKD)")
    beta: float = Field(2.0, ge=0.0, description="weight of non-target-class KD (NCKD)")
    T: float = Field(4.0, gt=0.0, description="softmax temperature")
    warmup_epochs: int | None = Field(
        None,
        ge=0,
        description="the loss ramps up linearly over this many epochs (0: off); default: "
        "over the first 1/12 of the stage's steps (mdistiller's 20 of 240 epochs)",
    )


# mdistiller warms DKD up over 20 of its 240 CIFAR epochs
WARMUP_FRACTION = 20 / 240
REFERENCE_WARMUP_EPOCHS = 20


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """``min((epoch + 1) / warmup_epochs, 1)`` for a 0-based ``epoch``.

    mdistiller multiplies by ``min(epoch / warmup, 1)`` with 1-based epochs, so the first
    epoch trains at 1/20 of the weight and epoch 20 onwards at the full weight; this is
    the same schedule with kdlab's 0-based ``StepContext.epoch``.
    """
    if warmup_epochs <= 0:
        return 1.0
    return min((epoch + 1) / warmup_epochs, 1.0)


def dkd_warmup(ctx: StepContext, warmup_epochs: int | None) -> float:
    """The warm-up factor of a step: the recipe's epochs, else a linear ramp over the
    first :data:`WARMUP_FRACTION` of the stage (``ctx.progress``), else mdistiller's 20
    epochs when the caller gives no progress (a Distiller used outside the engine)."""
    if warmup_epochs is not None:
        return warmup_factor(ctx.epoch, warmup_epochs)
    if ctx.progress is None:
        return warmup_factor(ctx.epoch, REFERENCE_WARMUP_EPOCHS)
    return min(ctx.progress / WARMUP_FRACTION, 1.0)


class DecoupledKD(Term[DKDParams]):
    """KD split into target-class (TCKD) and non-target-class (NCKD) parts, reweighted.

    Paper: Zhao, Cui, Song, Qiu & Liang, Decoupled Knowledge Distillation, CVPR 2022
    (arXiv:2203.08679).

    Classical KD equals ``TCKD + (1 - p_target^teacher) NCKD`` (eq. 1); DKD drops the
    teacher-confidence factor and weighs the parts: ``alpha * TCKD + beta * NCKD``
    (eq. 5), both at temperature T and scaled by ``T^2``
    (:func:`kdlab.functional.logits.dkd_loss`), averaged over the batch. The loss is
    multiplied by a linear warm-up factor over the first ``warmup_epochs`` epochs, as
    in the authors' training code (mdistiller), to avoid large early gradients.

    Defaults: alpha 1, beta 2, T 4, term weight 1 beside ``ce`` at 1. The paper's
    CIFAR-100 setting and mdistiller's global default is beta 8; mdistiller itself uses
    2 for its resnet56/110 -> resnet20/32 pairs, 6 for WRN and VGG pairs and 8 for
    resnet32x4 -> resnet8x4, which the cifar100 recipes copy. Beta 2 is the default
    because beta 8 outweighs the labels on small students: on a fresh 10-class student
    its gradient is about 13 times cross-entropy's (KD's: 1.7), and after 8 epochs on
    Fashion-MNIST (cnn3 / resnet8 -> cnn_tiny) the student gained +0.0 / -5.3 points
    at beta 8, +1.4 / -0.2 at 4 and +3.2 / +3.8 at 2 (one seed each; KD: +1.4 / +2.0).

    Departure, the warm-up: unless ``warmup_epochs`` fixes it, it is a linear ramp over
    the first 1/12 of the stage's steps (mdistiller's 20 of 240 epochs), so it keeps its
    share of a short schedule (a fixed 20 epochs never reaches full weight in 8).
    """

    method = "dkd"
    default_weight = 1.0

    def forward(self, ctx: StepContext) -> Tensor:
        p = self.params
        assert ctx.teacher is not None
        if ctx.targets.dim() != 1 or ctx.targets.is_floating_point():
            raise DataError(
                f"term {self.term_name!r}: dkd splits the target class from the others, so "
                f"it needs hard integer labels of shape (batch,), got "
                f"{ctx.targets.dtype} {tuple(ctx.targets.shape)}"
            )
        loss = dkd_loss(ctx.student.logits, ctx.teacher.logits, ctx.targets, p.alpha, p.beta, p.T)
        return dkd_warmup(ctx, p.warmup_epochs) * loss
