"""``hidden_mse``: TinyBERT's hidden-state distillation (Jiao et al., arXiv:1909.10351)."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from kdlab.errors import TapError
from kdlab.functional.transformer import hidden_mse
from kdlab.methods._features import FeatureParams
from kdlab.methods._hidden import hidden_pairs, mapped, width_map
from kdlab.methods.base import Shapes, StepContext, Term


class HiddenMSEParams(FeatureParams):
    shared_map: bool = Field(
        True, description="one W_h for every layer pair (TinyBERT's code); false: one per pair"
    )


class HiddenMSE(Term[HiddenMSEParams]):
    """Hidden states through a learned linear map (TinyBERT eq. 8), summed over pairs.

    ``sum_m MSE(H_s^m W_h, H_t^g(m))`` with ``H`` the hidden states ``(N, L, H)`` of the
    paired taps (e.g. ``bert.encoder.layer.1`` -> ``bert.encoder.layer.3``; the embedding
    output ``bert.embeddings`` is TinyBERT's layer 0) and ``W_h`` a learned
    ``Linear(H_s, H_t)`` trained with the student. TinyBERT's code shares one ``W_h``
    (``fit_dense``) over all layers: the default; ``shared_map: false`` learns one per
    pair. The mean over elements (TinyBERT's ``MSELoss``) keeps the scale independent of
    batch size, length and width; the default weight is TinyBERT's 1. TinyBERT also
    matches attention scores (MSE on pre-softmax scores); kdlab's attention term is
    MiniLM's KL on probabilities (``attention_kl``).
    """

    method = "hidden_mse"
    default_weight = 1.0

    def __init__(self, params: HiddenMSEParams) -> None:
        super().__init__(params)
        self.params: HiddenMSEParams = params
        self.maps = nn.ModuleList()

    def setup(self, shapes: Shapes) -> None:
        pairs = hidden_pairs(self, shapes)
        widths = [(h_s, h_t) for _, _, h_s, h_t in pairs]
        if self.params.shared_map and len(set(widths)) > 1:
            raise TapError(
                f"term {self.term_name!r} (hidden_mse): one shared map needs the same widths "
                f"in every pair, got (student, teacher) widths {widths}; set shared_map: false"
            )
        chosen = widths[:1] if self.params.shared_map else widths
        self.maps = nn.ModuleList(width_map(h_s, h_t, learned=True) for h_s, h_t in chosen)

    def forward(self, ctx: StepContext) -> Tensor:
        total = ctx.student.logits.new_zeros(())
        for i, (s, t) in enumerate(self.paired_taps()):
            total = total + hidden_mse(mapped(self.maps, i, ctx.s(s)), ctx.t(t))
        return total
