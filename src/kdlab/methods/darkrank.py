"""``darkrank``: Chen, Wang & Zhang, DarkRank: Accelerating Deep Metric Learning via
Cross Sample Similarities Transfer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import Tensor

from kdlab.functional.rank import MAX_EXACT_LIST, darkrank_loss
from kdlab.methods.base import StepContext, Term, TermParams
from kdlab.taps import Tap


class DarkRankParams(TermParams):
    student: list[str] | None = Field(
        None, max_length=1, description="the student's embedding tap (default: its output)"
    )
    teacher: list[str] | None = Field(
        None, max_length=1, description="the teacher's embedding tap (default: its output)"
    )
    alpha: float = Field(12.25, gt=0.0, description="score scale: S = -alpha * d^beta")
    beta: float = Field(4.0, gt=0.0, description="score contrast: S = -alpha * d^beta")
    transfer: Literal["soft", "hard", "both"] = "soft"
    list_length: int | None = Field(
        4, ge=1, description="each query's list: its teacher nearest neighbours (null: batch)"
    )
    soft_mode: Literal["exact", "top1"] = Field(
        "exact", description="soft transfer over all permutations, or ListNet's top-one"
    )
    normalize: bool = Field(True, description="L2-normalise embeddings before scoring")

    @model_validator(mode="after")
    def _exact_fits(self) -> DarkRankParams:
        if self.transfer != "hard" and self.soft_mode == "exact":
            if self.list_length is None or self.list_length > MAX_EXACT_LIST:
                raise ValueError(
                    f"exact soft transfer enumerates list_length! permutations; set "
                    f"list_length <= {MAX_EXACT_LIST} or soft_mode: top1"
                )
        return self


class DarkRank(Term[DarkRankParams]):
    """Cross-sample similarity transfer for metric learning (AAAI 2018, arXiv:1707.01220).

    Every sample of a batch queries the others. The teacher's embeddings rank each
    query's neighbours by ``S = -alpha * ||q - x||^beta``; the student learns that
    ranking through the Plackett-Luce model (formulas in :mod:`kdlab.functional.rank`):

    - ``transfer: soft``: KL between the teacher's and the student's distributions over
      all permutations of the list (ListNet). Exact enumeration costs ``L!``, so the list
      is each query's ``list_length`` (default 4) teacher-nearest neighbours;
      ``soft_mode: top1`` uses ListNet's top-one approximation instead (any length).
    - ``transfer: hard``: negative log-likelihood under the student of the teacher's
      ranking (ListMLE), linear in the list length; ``list_length: null`` ranks the
      whole batch as the paper's eq. 1 writes it.

    Defaults: the official code's (TuSimple/DarkRank, ``PYOP/listnet_loss.py`` with the
    README's ``--score-power 2.0 --embedding-l2-norm 3.5 --list-length 4
    --loss-weight-listnet 16.0``): embeddings L2-normalised, scaled by sqrt(3.5), and
    scored by the negative squared distance to the power 2, i.e. ``S = -12.25 d^4``
    (``alpha = 12.25``, ``beta = 4``); each query's list is its 4 teacher-nearest
    neighbours; soft transfer over all 24 permutations; weight 16 beside the student's own
    metric loss (``triplet``). Differences from that code: it takes the cross-entropy
    ``-sum P_t log P_s`` (the KL here differs by the teacher's entropy, which has no
    gradient) and queries only the first half of each batch (its paired sampler).
    lenscloth/RKD's ``HardDarkRank`` uses ``alpha = 3`` (2 in its training script),
    ``beta = 3`` and ranks the same 4 neighbours; torchdistill, RepDistiller and
    mdistiller have no DarkRank. Unit-norm embeddings keep ``d^4`` in ``[0, 16]``.

    The embedding is the model's output unless a tap is given (e.g. ``fc:input`` of a
    classifier). Teacher and student dimensions may differ: only distances are compared.
    """

    method = "darkrank"
    default_weight = 16.0

    def student_taps(self) -> list[Tap]:
        return [Tap.parse(t) for t in self.params.student or []]

    def teacher_taps(self) -> list[Tap]:
        return [Tap.parse(t) for t in self.params.teacher or []]

    def forward(self, ctx: StepContext) -> Tensor:
        assert ctx.teacher is not None
        p = self.params
        s = ctx.s(p.student[0]) if p.student else ctx.student.logits
        t = ctx.t(p.teacher[0]) if p.teacher else ctx.teacher.logits
        return darkrank_loss(
            s.flatten(1),
            t.flatten(1),
            alpha=p.alpha,
            beta=p.beta,
            transfer=p.transfer,
            list_length=p.list_length,
            soft_mode=p.soft_mode,
            normalize=p.normalize,
        )
