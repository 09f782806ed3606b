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
from kdlab.methods._features import Layout, MapParams, as_map, map_shape
from kdlab.methods.base import Shapes, StepContext, Term


class VIDParams(MapParams):
    mid_channels: int | None = Field(
        None, ge=1, description="width of the regressor's hidden 1x1 convs (None: teacher's)"
    )
    init_variance: float = Field(5.0, gt=0.0, description="initial sigma^2 of every channel")
    eps: float = Field(1e-5, gt=0.0, description="floor added to the softplus variance")


def _as_map(f: Tensor, layout: Layout) -> Tensor:
    """Vectors ``(b, d)`` become ``(b, d, 1, 1)`` and 3-D taps ``(b, C, 1, L)`` (see
    ``layout``), so one 1x1-conv regressor fits every rank."""
    if f.dim() == 2:
        return f[:, :, None, None]
    return as_map(f, layout)


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

    Taps may be maps ``(b, C, H, W)``, vectors ``(b, d)`` or 3-D: ``(b, C, L)`` of a
    Conv1d (``layout: ncl``) or ``(b, L, H)`` hidden states (``layout: nlc``), read as
    ``(b, C, 1, L)`` maps, so the regressor's 1x1 convs act per position and the
    variance is per channel, as on images.

    Defaults: weight 1 beside ``ce`` at 1 (the CIFAR-100 reference protocol), hidden
    width = teacher channels, initial variance 5, eps 1e-5 (RepDistiller's values; the
    paper gives none). The paper averages over the batch and sums over C, H, W;
    RepDistiller, for which weight 1 was tuned, averages over all elements, as here.
    """

    method = "vid"
    default_weight = 1.0

    def setup(self, shapes: Shapes) -> None:
        p = self.params
        s_layout, t_layout = p.side_layouts()
        self.regressors = nn.ModuleList()
        self.log_scales = nn.ParameterList()
        for s, t in self.paired_taps():
            s_shape, t_shape = shapes.student[s], shapes.teacher[t]
            if len(s_shape) not in (2, 3, 4) or len(t_shape) not in (2, 3, 4):
                raise TapError(
                    f"term {self.term_name!r} (vid): student tap {str(s)!r} gives "
                    f"{tuple(s_shape)[1:]} and teacher tap {str(t)!r} gives "
                    f"{tuple(t_shape)[1:]} per sample; valid: (N, C, H, W) maps, (N, D) "
                    "vectors or 3-D taps ((N, C, L) with layout 'ncl', (N, L, H) with 'nlc')"
                )
            s_shape, t_shape = map_shape(s_shape, s_layout), map_shape(t_shape, t_layout)
            cs, ct = int(s_shape[1]), int(t_shape[1])
            self.regressors.append(VIDRegressor(cs, p.mid_channels or ct, ct))
            # softplus(alpha) = init_variance - eps  <=>  alpha = log(exp(v - eps) - 1)
            alpha = math.log(math.expm1(p.init_variance - p.eps))
            self.log_scales.append(nn.Parameter(torch.full((ct,), alpha)))

    def forward(self, ctx: StepContext) -> Tensor:
        p = self.params
        s_layout, t_layout = p.side_layouts()
        total = ctx.student.logits.new_zeros(())
        for i, (s, t) in enumerate(self.paired_taps()):
            fs, ft = _as_map(ctx.s(s), s_layout), _as_map(ctx.t(t), t_layout)
            hs, ht = fs.shape[2:], ft.shape[2:]
            if hs[0] > ht[0] or hs[1] > ht[1]:
                fs = F.adaptive_avg_pool2d(fs, ht)
            elif ht[0] > hs[0] or ht[1] > hs[1]:
                ft = F.adaptive_avg_pool2d(ft, hs)
            mean = self.regressors[i](fs)
            var = F.softplus(self.log_scales[i]) + p.eps
            total = total + vid_nll(ft, mean, var.view(1, -1, 1, 1))
        return total
