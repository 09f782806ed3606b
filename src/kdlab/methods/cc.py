"""``cc``: Peng et al., Correlation Congruence for Knowledge Distillation."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from kdlab.functional.relations import correlation_congruence_loss
from kdlab.heads import Embed
from kdlab.methods.base import Shapes, StepContext, Term, TermParams


class CCParams(TermParams):
    student: list[str] = Field(default_factory=lambda: ["fc:input"], min_length=1)
    teacher: list[str] = Field(default_factory=lambda: ["fc:input"], min_length=1)
    gamma: float = Field(0.4, gt=0.0, description="Gaussian RBF width")
    order: int = Field(2, ge=0, le=10, description="Taylor order P of the RBF kernel")
    embed_dim: int | None = Field(
        None,
        ge=1,
        description="None: correlate the tapped features directly (the paper); "
        "an int: first project both through a linear + L2-norm head (RepDistiller)",
    )


class CorrelationCongruence(Term[CCParams]):
    """Match the ``b x b`` correlation (kernel) matrices of student and teacher embeddings.

    Paper: Peng et al., Correlation Congruence for Knowledge Distillation, ICCV 2019
    (arXiv:1904.01802).

    ``psi(F)_ij = k(f_i, f_j)`` with the Gaussian RBF kernel on L2-normalised features
    approximated by its P-order Taylor series (P = 2, gamma 0.4); loss
    ``||psi(F_t) - psi(F_s)||_F^2 / b^2`` (eq. 5), summed over tap pairs
    (:func:`kdlab.functional.relations.correlation_congruence_loss`). The paper computes
    it on the embedding features before the classifier (``fc:input``) and adds it to CE
    and KD; the matrices are ``b x b``, so feature widths may differ and no head is
    needed (``embed_dim: null``, the default).

    Default weight 10. The CIFAR-100 reference protocol's 0.02 was set for RepDistiller's
    CC, which is a different function: trainable 128-d linear + L2 embeddings on both
    sides (``embed_dim: 128`` here) and
    ``mean_i sum_d |s_i - t_i|_d |s_{i+1} - t_{i+1}|_d`` over consecutive samples, not a
    kernel matrix. With the paper's loss, 0.02 gives a gradient about 1/500 of
    cross-entropy's on a fresh student (Fashion-MNIST and digits pairs): a term that does
    nothing. The paper states no weight that transfers; 10 makes the gradient about that
    of cross-entropy. The Taylor-RBF form and gamma 0.4 follow Knowledge-Distillation-Zoo
    (AberHu), a third-party re-implementation: the authors released no code.
    """

    method = "cc"
    default_weight = 10.0

    def setup(self, shapes: Shapes) -> None:
        p = self.params
        pairs = self.paired_taps()
        self.embed_s = nn.ModuleList()
        self.embed_t = nn.ModuleList()
        if p.embed_dim is not None:
            for s, t in pairs:
                self.embed_s.append(Embed(shapes.student[s][1:].numel(), p.embed_dim))
                self.embed_t.append(Embed(shapes.teacher[t][1:].numel(), p.embed_dim))

    def forward(self, ctx: StepContext) -> Tensor:
        p = self.params
        total = ctx.student.logits.new_zeros(())
        for i, (s, t) in enumerate(self.paired_taps()):
            fs, ft = ctx.s(s), ctx.t(t)
            if len(self.embed_s):
                fs, ft = self.embed_s[i](fs), self.embed_t[i](ft)
            total = total + correlation_congruence_loss(fs, ft, p.gamma, p.order)
        return total
