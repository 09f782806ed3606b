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
from kdlab.methods._features import MapParams, map_pairs, pair_maps, stage_name
from kdlab.methods.base import Shapes, StageConfig, StepContext, Term, pre_stage_length


class FTParams(MapParams):
    rate: float = Field(0.5, gt=0.0, description="paraphraser rate k (factor = k * C_T channels)")
    p: int = Field(1, ge=1, description="norm of the factor distance (paper: 1)")
    reduction: Literal["sqrt", "mean", "paper"] = Field(
        "sqrt",
        description="'sqrt': per-sample norm / sqrt(n), independent of the factor size; "
        "'mean': over elements (authors' code); 'paper': per-sample p-norm",
    )
    paraphraser_bn: bool = Field(False, description="BN in the paraphraser (neither reference)")
    translator_bn: bool = Field(True, description="BN in the translator (RepDistiller)")
    paraphraser_epochs: int | None = Field(
        None, ge=0, description="paraphraser epochs (0: none); default: 1/8 of train.epochs"
    )
    paraphraser_lr: float | None = Field(
        None,
        gt=0.0,
        description="its SGD learning rate; default: train.optimizer's (RepDistiller: 0.01 "
        "for ResNet/WRN students, else the main one)",
    )


class FactorTransfer(Term[FTParams]):
    """Factor transfer (arXiv:1802.04977) on one teacher/student map pair.

    Stage "paraphraser" (``paraphraser_epochs``, default 1/8 of ``train.epochs``, the
    reference protocol's 30 of 240) trains only the paraphraser ``P`` (a conv
    auto-encoder, rate k = 0.5, no BatchNorm as in the authors' code and RepDistiller)
    to reconstruct the teacher map: loss mode ``reconstruction``, ``||x - P(x)||^2`` as a
    mean, at ``paraphraser_lr`` (default: the main optimiser's, as the authors and
    RepDistiller for VGG, MobileNet and ShuffleNet students; RepDistiller uses 0.01 for
    ResNet and WRN students, which the cifar100 recipes set). The main stage trains the
    student and the translator (BN after each conv, RepDistiller's) with

        beta * || F_T/||F_T||_2 - F_S/||F_S||_2 ||_p,   p = 1,

    ``F_T`` the frozen paraphraser's encoding of the teacher map (run in eval mode, no
    gradient), ``F_S`` the translator's output on the student map; beta is the weight.
    Cross-architecture pairs work: the translator resamples to the teacher's spatial
    size.

    Departure, the factor size: the authors' code averages ``|d|`` over the ``n``
    elements of the factor (``reduction: mean``, their beta 500 on CIFAR-10's
    32 x 8 x 8 factors), a value that shrinks like ``1/sqrt(n)`` for factors of the same
    statistics (the paper's per-sample norm grows like ``sqrt(n)``). The default
    ``reduction: sqrt`` takes ``||d||_1 / sqrt(n)``, unchanged when the map is upsampled;
    the authors' beta 500 at ``n = 2048`` is weight 11 here, the default. RepDistiller's
    weight 200 belongs to another function (its factor is the L2-normalised channel
    mean of ``F^2``, an ``H*W`` vector) and is not comparable.

    3-D taps: ``(N, C, L)`` maps (``layout: ncl``) or ``(N, L, H)`` hidden states
    (``layout: nlc``) are viewed as ``(N, C, 1, L)``. The paraphraser's and translator's
    3x3 convs (padding 1) then see one row of data between zero padding: they compute
    1-D convs of kernel 3, and the outer rows of each kernel (two thirds of its weights)
    never receive a gradient. The factor has ``k*C_T*L`` elements.
    """

    method = "ft"
    default_weight = 11.0
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
        ((_s, _t, s_shape, t_shape),) = map_pairs(self, shapes)
        p = self.params
        self.paraphraser = Paraphraser(int(t_shape[1]), p.rate, p.paraphraser_bn)
        self.translator = Translator(s_shape, t_shape, p.rate, p.translator_bn)

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
        map_s, map_t = pair_maps(self, ctx, *self._taps())
        factor_t = self.teacher_factor(map_t)
        factor_s = self.translator(map_s)
        return factor_transfer(factor_s, factor_t, self.params.p, self.params.reduction)

    def loss_reconstruction(self, ctx: StepContext) -> Tensor:
        """The paraphraser pre-stage loss on the teacher map."""
        _map_s, x = pair_maps(self, ctx, *self._taps())
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
                optimizer=None
                if self.params.paraphraser_lr is None
                else OptimizerConfig(lr=self.params.paraphraser_lr),
            )
        ]
