"""``attention_kl``: MiniLM's self-attention distribution transfer (arXiv:2002.10957)."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdlab.errors import TapError
from kdlab.functional.transformer import attention_kl
from kdlab.methods._features import FeatureParams, probed_pairs
from kdlab.methods.base import Shapes, StepContext, Term

_ROW_TOLERANCE = 1e-3


class AttentionKLParams(FeatureParams):
    average_heads: bool = Field(
        False, description="average the heads' distributions first (for unequal head counts)"
    )


class AttentionKL(Term[AttentionKLParams]):
    """``KL(A_t || A_s)`` of attention distributions, summed over tap pairs (MiniLM eq. 2).

    Taps: attention probabilities ``(N, heads, L, L)``, e.g.
    ``bert.encoder.layer.K.attention.self:output.1`` (Hugging Face models built with
    ``attn_implementation: eager``, kdlab's default for ``hf:`` models). The KL of each
    query's distribution over the keys is averaged over batch, heads and queries, as in
    MiniLM (which matches the last layers of equal head counts; TinyBERT instead takes an
    MSE of pre-softmax scores). With unequal head counts, ``average_heads: true``
    compares the head-averaged distributions (still distributions); kdlab's departure,
    MiniLM-v2 uses relation heads instead. Default weight 1 (MiniLM's).

    Hugging Face returns the weights after attention dropout, which are not distributions
    in training mode: the first step checks that the student's rows sum to 1 and names
    the fix (``attention_probs_dropout_prob: 0`` in the student's config) if not.
    """

    method = "attention_kl"
    default_weight = 1.0

    def __init__(self, params: AttentionKLParams) -> None:
        super().__init__(params)
        self.params: AttentionKLParams = params
        self._rows_checked = False

    def setup(self, shapes: Shapes) -> None:
        for s, t, s_shape, t_shape in probed_pairs(self, shapes):
            fits = len(s_shape) == len(t_shape) == 4 and s_shape[2:] == t_shape[2:]
            if not fits or (s_shape[1] != t_shape[1] and not self.params.average_heads):
                raise TapError(
                    f"term {self.term_name!r} (attention_kl) needs attention probabilities "
                    f"(N, heads, L, L) of equal sizes; student tap {str(s)!r} gives "
                    f"{tuple(s_shape)[1:]} and teacher tap {str(t)!r} gives "
                    f"{tuple(t_shape)[1:]}"
                    + ("; for unequal head counts set average_heads: true" if fits else "")
                )

    def _check_rows(self, s: str, attn: Tensor) -> None:
        # One host sync, once: dropped-out weights are a silent error otherwise.
        gap = float((attn.detach().sum(dim=-1) - 1).abs().max())
        if gap > _ROW_TOLERANCE:
            raise TapError(
                f"term {self.term_name!r} (attention_kl): student tap {s!r} does not hold "
                f"probabilities (a row sums to 1 {gap:+.3g}); Hugging Face returns attention "
                "weights after dropout: set attention_probs_dropout_prob: 0 in the student's "
                "config, or tap attention probabilities"
            )

    def forward(self, ctx: StepContext) -> Tensor:
        total = ctx.student.logits.new_zeros(())
        for s, t in self.paired_taps():
            a_s, a_t = ctx.s(s), ctx.t(t)
            if not self._rows_checked:
                self._check_rows(str(s), a_s)
                self._rows_checked = True
            if self.params.average_heads:
                a_s, a_t = a_s.mean(dim=1, keepdim=True), a_t.mean(dim=1, keepdim=True)
            total = total + attention_kl(a_s, a_t)
        return total
