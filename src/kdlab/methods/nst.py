"""``nst``: Huang & Wang, Like What You Like: Neuron Selectivity Transfer (2017)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from kdlab.functional.features import nst_mmd2, pool_to_smaller
from kdlab.methods._features import FeatureParams, probed_pairs, require_maps
from kdlab.methods.base import Shapes, StepContext, Term


class NSTParams(FeatureParams):
    kernel: Literal["linear", "poly", "gaussian"] = "poly"
    degree: int = Field(2, ge=1, description="polynomial kernel degree d")
    c: float = Field(0.0, ge=0.0, description="polynomial kernel offset c")
    sigma2: float = Field(1.0, gt=0.0, description="Gaussian kernel variance sigma^2")


class NeuronSelectivityTransfer(Term[NSTParams]):
    """MMD between normalised channel distributions (arXiv:1707.01219).

    Each channel's spatial map, flattened and L2-normalised, is a sample of the
    layer's "neuron selectivity" distribution; the loss is ``lambda/2 * sum_j MMD^2``
    between the teacher's and the student's sample sets, with lambda the term's weight
    (default 50, the reference protocol's). Kernels: ``linear`` (``x.y``), ``poly``
    (``(x.y + c)^d``, the paper's d = 2, c = 0; the default, as in the paper's main
    results), ``gaussian`` (``exp(-||x-y||^2/(2 sigma2))``).

    Channel counts may differ (MMD compares sets). Spatial sizes must match: the larger
    map is average-pooled to the smaller, as in RepDistiller. RepDistiller implements
    only the polynomial kernel and drops the 1/2, so its weight 50 equals our 100.
    """

    method = "nst"
    default_weight = 50.0

    def __init__(self, params: NSTParams) -> None:
        super().__init__(params)

    def setup(self, shapes: Shapes) -> None:
        for s, t, s_shape, t_shape in probed_pairs(self, shapes):
            require_maps(self, s, t, s_shape, t_shape)

    def forward(self, ctx: StepContext) -> Tensor:
        p = self.params
        total = ctx.student.logits.new_zeros(())
        for s, t in self.paired_taps():
            fs, ft = pool_to_smaller(ctx.s(s), ctx.t(t))
            total = total + nst_mmd2(fs, ft, p.kernel, p.degree, p.c, p.sigma2)
        return 0.5 * total
