"""``triplet``: the metric loss of a student (or teacher) embedding, on batch labels."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from kdlab.functional.rank import triplet_loss
from kdlab.methods.base import StepContext, Term, TermParams
from kdlab.taps import Tap


class TripletParams(TermParams):
    student: list[str] | None = Field(
        None, max_length=1, description="the embedding tap (default: the model output)"
    )
    margin: float = Field(0.2, ge=0.0)
    mining: Literal["all", "hard"] = "all"
    normalize: bool = Field(True, description="L2-normalise embeddings first")


class Triplet(Term[TripletParams]):
    """In-batch triplet loss, FaceNet (Schroff et al., arXiv:1503.03832).

    ``mean over violating (a, p, n) of max(0, d(a, p) - d(a, n) + margin)`` on
    L2-normalised embeddings, margin 0.2 (FaceNet's alpha; RKD's default too). FaceNet
    uses squared distances and semi-hard mining; kdlab uses plain distances with
    batch-all (default) or batch-hard mining (Hermans et al., arXiv:1703.07737). It is
    the metric loss DarkRank's students train with (the paper's baselines combine a
    triplet loss with classification/verification losses). Label-only: no teacher.
    """

    method = "triplet"
    needs_teacher = False

    def student_taps(self) -> list[Tap]:
        return [Tap.parse(t) for t in self.params.student or []]

    def forward(self, ctx: StepContext) -> Tensor:
        p = self.params
        emb = ctx.s(p.student[0]) if p.student else ctx.student.logits
        return triplet_loss(emb.flatten(1), ctx.targets, p.margin, p.mining, p.normalize)
