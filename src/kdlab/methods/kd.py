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
    Defaults: T = 4, weight 0.9 (the CIFAR-100 reference protocol's, where ``ce`` weighs
    0.1; the paper weighs the hard loss "considerably lower"). kdlab's own recipes keep
    ``ce`` at its default 1: on small students that learn far from their teacher the
    labels matter (Fashion-MNIST, cnn3 / resnet8 -> cnn_tiny, 8 epochs, two seeds: ``ce``
    0.1 gained +0.2 / +1.0 points over the label-only student, ``ce`` 1 +2.6 / +2.5).
    The paper writes the soft loss as a cross-entropy; KL has the same gradient.
    RepDistiller and mdistiller use the same KL * T^2 form.
    """

    method = "kd"
    default_weight = 0.9

    def forward(self, ctx: StepContext) -> Tensor:
        assert ctx.teacher is not None
        return kd_loss(ctx.student.logits, ctx.teacher.logits, self.params.T)
