"""``ab``: Heo et al., Knowledge Transfer via Distillation of Activation Boundaries (AAAI 2019)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import Tensor, nn

from kdlab.adapters import connector
from kdlab.errors import ConfigError
from kdlab.functional.features import activation_boundary_loss
from kdlab.methods._features import MapParams, map_pairs, pair_maps, stage_name
from kdlab.methods.base import Shapes, StageConfig, StepContext, Term, pre_stage_length


class ABParams(MapParams):
    margin: float = Field(1.0, ge=0.0, description="the margin mu of the alternative loss")
    reduction: Literal["paper", "mean"] = Field(
        "mean", description="'mean' over C*H*W (default) or the paper's sum over them"
    )
    layer_weights: list[float] | None = Field(
        None, description="per-pair weights (default 1 each; RepDistiller: 2^(i-n+1))"
    )
    init_epochs: int | None = Field(
        None, ge=0, description="init stage epochs (0: none); default: 1/8 of train.epochs"
    )
    main_stage: bool = Field(False, description="also add the AB loss to the main stage")

    @model_validator(mode="after")
    def _weights_match(self) -> ABParams:
        if self.layer_weights is not None and len(self.layer_weights) != len(self.student):
            raise ConfigError(
                f"ab: layer_weights has {len(self.layer_weights)} entries for "
                f"{len(self.student)} tap pairs"
            )
        return self


class ActivationBoundaries(Term[ABParams]):
    """Activation-boundary transfer (arXiv:1811.03233) on pre-activations via connectors.

    Tap the teacher's and student's *pre-activations* (the input of a ReLU, ``relu:input``,
    or the BN output right before it). A connector ``r`` maps each student map to the
    teacher's; the paper's margin-based alternative loss

        sum_j || rho(T) * relu(mu - r(S)) + (1 - rho(T)) * relu(mu + r(S)) ||_2^2

    (``rho(t) = 1[t > 0]``, margin ``mu`` = 1) pushes student neurons to fire (>= mu)
    where the teacher's fire and to stay off (<= -mu) where they do not. The connector is
    the identity where the two maps have one shape, else a 1x1 conv + BN initialised as
    the authors' (:func:`kdlab.adapters.connector`), as in the authors' code
    (bhheo/AB_distillation) and RepDistiller.

    Stages: "ab_init" (``init_epochs``, default 1/8 of ``train.epochs``, the reference
    protocol's 30 of 240) trains the student and the connectors on this loss alone; then
    the main stage runs the recipe's other terms (CE, or CE + KD) and the connectors are
    dropped.

    Departure, the scale: the paper and RepDistiller sum the hinge over ``C*H*W``
    (``reduction: paper``), and RepDistiller weighs pair i of n by ``2^(i-n+1)``
    (``layer_weights``) and the sum by ``3/1000``; the cifar100 recipes set exactly that.
    A sum grows with the map, and alone in its stage the loss scale is the step size:
    on BN'd pre-activations the margin is never met by most units, so every step pushes
    the BN'd conv weights outward, and their grown norms slow all later learning (on
    Fashion-MNIST, cnn3 -> cnn_tiny, one epoch at about RepDistiller's scale left the
    student's conv weights 4 to 6 times larger after training than from labels alone).
    The default ``reduction: mean`` averages over the elements, so the value does not
    change with the map size, and weighs every pair equally. RepDistiller's scale is
    a mean-form weight of about 12 (ResNets) to 25 (WRN) per pair on CIFAR; the default
    weight 0.3 is far gentler, an initialisation that leaves the conv weights' norms
    where training from labels puts them. Measured on Fashion-MNIST (cnn3 / resnet8 ->
    cnn_tiny, 8 epochs, one seed): RepDistiller's scale -5.6 / -3.7 points against the
    label-only student, mean-form 25: -5.2 / -3.3, 5: -3.9 / -2.5, 1: -2.0 / -1.2,
    0.3: -1.1 / -0.1. AB gains nothing here, as in RepDistiller's CIFAR table, where it
    is at or below the label-only student on most pairs.

    Taps: two ``(N, C, H, W)`` maps, two ``(N, D)`` vectors (a linear connector + BN),
    or two 3-D taps, ``(N, C, L)`` maps (``layout: ncl``) or ``(N, L, H)`` hidden states
    (``layout: nlc``), viewed as ``(N, C, 1, L)``: the connector is then a 1-D one (a
    Conv1d of kernel 1 + BN in effect, pooled or linearly interpolated along ``L`` to
    the teacher's length) and the hinge sums or averages over ``C*L``.
    """

    method = "ab"
    default_weight = 0.3
    in_main_stage = False

    def __init__(self, params: ABParams) -> None:
        super().__init__(params)
        self.connectors = nn.ModuleList()

    def setup(self, shapes: Shapes) -> None:
        self.connectors = nn.ModuleList(
            connector(s_shape, t_shape)
            for _s, _t, s_shape, t_shape in map_pairs(self, shapes, vectors=True)
        )

    def forward(self, ctx: StepContext) -> Tensor:
        pairs = self.paired_taps()
        weights = self.params.layer_weights or [1.0] * len(pairs)
        total = ctx.student.logits.new_zeros(())
        for (s, t), conn, w in zip(pairs, self.connectors, weights):
            f_s, f_t = pair_maps(self, ctx, s, t)
            loss = activation_boundary_loss(
                conn(f_s), f_t, self.params.margin, self.params.reduction
            )
            total = total + w * loss
        return total

    def pre_stages(self) -> list[StageConfig]:
        if self.params.init_epochs == 0:
            return []
        return [
            StageConfig(
                name=stage_name(self, "ab_init"),
                **pre_stage_length(self.params.init_epochs),
                losses={self.term_name: self.weight},
                train=["student", f"terms.{self.term_name}"],
            )
        ]
