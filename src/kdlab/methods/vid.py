"""``vid``: Ahn et al., Variational Information Distillation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.errors import TapError
from kdlab.functional.relations import vid_nll
from kdlab.heads import VIDRegressor
from kdlab.methods.base import Shapes, StepContext, Term, TermParams


class VIDParams(TermParams):
    student: list[str] = Field(min_length=1, description="student layers, paired with teacher")
    teacher: list[str] = Field(min_length=1, description="teacher layers, paired with student")
    mid_channels: int | None = Field(
        None, ge=1, description="width of the regressor's hidden 1x1 convs (None: teacher's)"
    )
    init_variance: float = Field(5.0, gt=0.0, description="initial sigma^2 of every channel")
    eps: float = Field(1e-5, gt=0.0, description="floor added to the softplus variance")


def _as_map(f: Tensor) -> Tensor:
    """Vectors ``(b, d)`` become ``(b, d, 1, 1)`` so one 1x1-conv regressor fits both."""
    if f.dim() == 2:
        return f[:, :, None, None]
    if f.dim() != 4:
        raise TapError(f"vid: expects (b, C, H, W) or (b, d) features, got {tuple(f.shape)}")
    return f


class VariationalInformationDistillation(Term[VIDParams]):
    """Maximise a variational lower bound on the mutual information of layer pairs.

    Paper: Ahn, Hu, Damianou, Lawrence & Dai, Variational Information Distillation for
    Knowledge Transfer, CVPR 2019 (arXiv:1904.05835).

    For each pair, ``q(t | s) = N(t; mu(s), diag(sigma^2))`` with ``mu`` a stack of three
    1x1 convs (ReLU between; RepDistiller's form of the paper's 1x1-conv regressor) on
    the student feature and one learned variance per
    teacher channel, ``sigma_c^2 = softplus(alpha_c) + eps`` (eq. 6); the loss is the
    negative log-likelihood ``mean(log sigma + (t - mu)^2 / (2 sigma^2))``, the constant
    ``log(2 pi) / 2`` dropped (:func:`kdlab.functional.relations.vid_nll`). Pairs are
    summed. When spatial sizes differ the larger map is average-pooled to the smaller
    (RepDistiller does the same; the paper's pairs have equal sizes).

    Defaults: weight 1 beside ``ce`` at 1 (the CIFAR-100 reference protocol), hidden
    width = teacher channels, initial variance 5, eps 1e-5 (RepDistiller's values; the
    paper gives none). The paper averages over the batch and sums over C, H, W;
    RepDistiller, for which weight 1 was tuned, averages over all elements, as here.
    """

    method = "vid"
    default_weight = 1.0

    def setup(self, shapes: Shapes) -> None:
        p = self.params
        self.regressors = nn.ModuleList()
        self.log_scales = nn.ParameterList()
        for s, t in self.paired_taps():
            s_shape, t_shape = shapes.student[s], shapes.teacher[t]
            if len(s_shape) not in (2, 4) or len(t_shape) not in (2, 4):
                raise TapError(
                    f"term {self.term_name!r}: vid needs (b, C, H, W) or (b, d) features; "
                    f"student {s} is {tuple(s_shape)}, teacher {t} is {tuple(t_shape)}"
                )
            cs, ct = int(s_shape[1]), int(t_shape[1])
            self.regressors.append(VIDRegressor(cs, p.mid_channels or ct, ct))
            # softplus(alpha) = init_variance - eps  <=>  alpha = log(exp(v - eps) - 1)
            alpha = math.log(math.expm1(p.init_variance - p.eps))
            self.log_scales.append(nn.Parameter(torch.full((ct,), alpha)))

    def forward(self, ctx: StepContext) -> Tensor:
        p = self.params
        total = ctx.student.logits.new_zeros(())
        for i, (s, t) in enumerate(self.paired_taps()):
            fs, ft = _as_map(ctx.s(s)), _as_map(ctx.t(t))
            hs, ht = fs.shape[2:], ft.shape[2:]
            if hs[0] > ht[0] or hs[1] > ht[1]:
                fs = F.adaptive_avg_pool2d(fs, ht)
            elif ht[0] > hs[0] or ht[1] > hs[1]:
                ft = F.adaptive_avg_pool2d(ft, hs)
            mean = self.regressors[i](fs)
            var = F.softplus(self.log_scales[i]) + p.eps
            total = total + vid_nll(ft, mean, var.view(1, -1, 1, 1))
        return total
