"""``ft``: Kim, Park & Kwak, Paraphrasing Complex Network: Factor Transfer (NeurIPS 2018)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from kdlab.adapters import Paraphraser, Translator
from kdlab.config import OptimizerConfig
from kdlab.errors import ConfigError
from kdlab.functional.features import factor_transfer, reconstruction_loss
from kdlab.methods._features import FeatureParams, probed_pairs, require_maps, stage_name
from kdlab.methods.base import Shapes, StageConfig, StepContext, Term, pre_stage_length


class FTParams(FeatureParams):
    rate: float = Field(0.5, gt=0.0, description="paraphraser rate k (factor = k * C_T channels)")
    p: int = Field(1, ge=1, description="norm of the factor distance (paper: 1)")
    reduction: Literal["paper", "mean"] = Field(
        "mean", description="'mean' over elements (authors' code) or the per-sample p-norm"
    )
    bn: bool = Field(True, description="BN in paraphraser and translator (authors' code)")
    paraphraser_epochs: int | None = Field(
        None, ge=0, description="paraphraser epochs (0: none); default: 1/8 of train.epochs"
    )
    paraphraser_lr: float = Field(0.01, gt=0.0, description="its SGD learning rate")


class FactorTransfer(Term[FTParams]):
    """Factor transfer (arXiv:1802.04977) on one teacher/student map pair.

    Stage "paraphraser" (``paraphraser_epochs``, default 1/8 of ``train.epochs`` at lr 0.01, the
    reference
    protocol) trains only the paraphraser ``P`` (a conv auto-encoder, rate k = 0.5) to
    reconstruct the teacher map: loss mode ``reconstruction``, ``||x - P(x)||^2`` as a
    mean. The main stage trains the student and the translator with

        beta * || F_T/||F_T||_2 - F_S/||F_S||_2 ||_p,   p = 1,

    ``F_T`` the frozen paraphraser's encoding of the teacher map (run in eval mode, no
    gradient), ``F_S`` the translator's output on the student map; beta is the weight
    (default 200, the reference protocol's). ``reduction: mean`` (default) averages
    ``|d|`` over elements as the authors' code and RepDistiller do (the scale beta was
    tuned for); ``paper`` takes each sample's L1 norm. Cross-architecture pairs work: the
    translator resamples to the teacher's spatial size.
    """

    method = "ft"
    default_weight = 200.0
    frozen_in_main = ("paraphraser",)

    def __init__(self, params: FTParams) -> None:
        super().__init__(params)
        if len(params.student) != 1 or len(params.teacher) != 1:
            raise ConfigError(
                f"term {self.term_name!r} (ft): give one student and one teacher tap "
                "(one paraphraser per term; add a second ft term with its own name for more)"
            )
        self.paraphraser: nn.Module = nn.Identity()
        self.translator: nn.Module = nn.Identity()

    def setup(self, shapes: Shapes) -> None:
        ((s, t, s_shape, t_shape),) = probed_pairs(self, shapes)
        require_maps(self, s, t, s_shape, t_shape)
        self.paraphraser = Paraphraser(int(t_shape[1]), self.params.rate, self.params.bn)
        self.translator = Translator(s_shape, t_shape, self.params.rate, self.params.bn)

    def _taps(self):  # noqa: ANN202
        return self.paired_taps()[0]

    def teacher_factor(self, teacher_map: Tensor) -> Tensor:
        """The frozen paraphraser's factor: eval mode (running BN stats), no gradient."""
        was_training = self.paraphraser.training
        self.paraphraser.eval()
        try:
            with torch.no_grad():
                return self.paraphraser.encode(teacher_map)
        finally:
            self.paraphraser.train(was_training)

    def forward(self, ctx: StepContext) -> Tensor:
        s, t = self._taps()
        factor_t = self.teacher_factor(ctx.t(t))
        factor_s = self.translator(ctx.s(s))
        return factor_transfer(factor_s, factor_t, self.params.p, self.params.reduction)

    def loss_reconstruction(self, ctx: StepContext) -> Tensor:
        """The paraphraser pre-stage loss on the teacher map."""
        _s, t = self._taps()
        x = ctx.t(t)
        return reconstruction_loss(self.paraphraser(x), x)

    def pre_stages(self) -> list[StageConfig]:
        if self.params.paraphraser_epochs == 0:
            return []
        return [
            StageConfig(
                name=stage_name(self, "paraphraser"),
                **pre_stage_length(self.params.paraphraser_epochs),
                losses={f"{self.term_name}.reconstruction": 1.0},
                train=[f"terms.{self.term_name}.paraphraser"],
                optimizer=OptimizerConfig(lr=self.params.paraphraser_lr),
            )
        ]
