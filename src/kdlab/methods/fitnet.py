"""``fitnet``: Romero et al., FitNets: Hints for Thin Deep Nets (ICLR 2015)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from kdlab.adapters import ConvRegressor
from kdlab.functional.features import hint_loss
from kdlab.methods._features import MapParams, map_pairs, pair_maps, stage_name
from kdlab.methods.base import Shapes, StageConfig, StepContext, Term, pre_stage_length


class FitNetParams(MapParams):
    regressor: Literal["valid", 1] = Field(
        "valid", description="'valid': the paper's conv (kernel N_g - N_h + 1); 1: 1x1 + resample"
    )
    regressor_bn: bool = Field(False, description="BN after the regressor conv (RepDistiller)")
    regressor_relu: bool = Field(
        True, description="ReLU on the regressor (the hint's non-linearity; off for pre-ReLU hints)"
    )
    reduction: Literal["paper", "mean"] = Field(
        "mean", description="'mean': MSE mean (default); 'paper': 1/2 sum over C*H*W"
    )
    hint_epochs: int | None = Field(
        None, ge=0, description="hint stage epochs (0: none); default: 1/8 of train.epochs"
    )
    hint_weight: float = Field(1.0, gt=0.0, description="loss weight inside the hint stage")
    main_stage: bool = Field(
        False, description="also add the hint loss to the main stage (RepDistiller style)"
    )


class FitNet(Term[FitNetParams]):
    """Hints (arXiv:1412.6550): a regressor maps the student's guided layer to the hint.

    Hint loss: ``1/2 ||u_h(x) - r(v_g(x))||^2`` with ``u_h`` the teacher's hint layer,
    ``v_g`` the student's guided layer and ``r`` a conv regressor, averaged over the
    batch. Stage "hint" (``hint_epochs``, default 1/8 of ``train.epochs``, the reference
    protocol's 30 of 240
    initialisation length; the paper trains it to convergence) trains the student and
    the regressor on the hint loss alone; student layers after the guided layer get no
    gradient, so the optimiser leaves them untouched. The main stage then trains the
    whole student with the recipe's other terms (the paper: KD). The regressor is not
    used after the hint stage.

    Regressor: the paper's convolutional regressor (kernel ``N_g - N_h + 1``, no padding,
    so the hint's spatial size comes out; 1x1 when sizes match) with the hint's
    non-linearity (ReLU, as most hints are post-ReLU stage outputs; ``regressor_relu:
    false`` for pre-activation hints such as WRN group outputs). RepDistiller's ConvReg
    uses the same kernel (but a strided 3x3 or transposed 4x4 conv for exact factors of
    2) followed by BN and ReLU: ``regressor_bn: true``. ``regressor: 1`` is a 1x1 conv
    with pooling/interpolation, far cheaper across architectures with large maps.

    Scale: the paper's ``1/2 ||.||^2`` sums over ``C*H*W`` (``reduction: paper``);
    RepDistiller's ``MSELoss`` is a mean, the paper's value times ``2/(C*H*W)``. The
    default is the mean: alone in the hint stage the scale acts as a step size, and on
    digits (cnn_medium -> cnn_small, guided stages.0 -> hint stages.1, SGD lr 0.05, 3 hint
    epochs then 5 KD epochs) the paper's sum (512x the mean there) wrecked the guided
    layers (train accuracy 63% after the KD stage, against 97% with the mean). The
    reference protocol adds the hint to its single main stage with weight 100 on the
    mean: ``main_stage: true`` reproduces it (the default weight 100 applies there).

    Taps: two ``(N, C, H, W)`` maps, two ``(N, D)`` vectors (a linear regressor), or two
    3-D taps, ``(N, C, L)`` maps (``layout: ncl``) or ``(N, L, H)`` hidden states
    (``layout: nlc``), viewed as ``(N, C, 1, L)``: the regressor is then a 1-D one, a
    ``(1, L_g - L_h + 1)`` conv (a Conv1d of that kernel; transposed when the guided
    layer is shorter; ``regressor: 1``: kernel 1, then pooled or linearly interpolated
    along ``L``), and the hint loss sums or averages over ``C*L``.
    """

    method = "fitnet"
    default_weight = 100.0
    in_main_stage = False

    def __init__(self, params: FitNetParams) -> None:
        super().__init__(params)
        self.regressors = nn.ModuleList()

    def setup(self, shapes: Shapes) -> None:
        p = self.params
        self.regressors = nn.ModuleList(
            ConvRegressor(s_shape, t_shape, p.regressor, p.regressor_bn, p.regressor_relu)
            for _s, _t, s_shape, t_shape in map_pairs(self, shapes, vectors=True)
        )

    def forward(self, ctx: StepContext) -> Tensor:
        losses = []
        for (s, t), reg in zip(self.paired_taps(), self.regressors):
            f_s, f_t = pair_maps(self, ctx, s, t)
            losses.append(hint_loss(reg(f_s), f_t, self.params.reduction))
        return sum(losses[1:], losses[0])

    def pre_stages(self) -> list[StageConfig]:
        if self.params.hint_epochs == 0:
            return []
        return [
            StageConfig(
                name=stage_name(self, "hint"),
                **pre_stage_length(self.params.hint_epochs),
                losses={self.term_name: self.params.hint_weight},
                train=["student", f"terms.{self.term_name}"],
            )
        ]
