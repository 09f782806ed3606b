"""``nst``: Huang & Wang, Like What You Like: Neuron Selectivity Transfer (2017)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from kdlab.functional.features import nst_mmd2, pool_to_smaller
from kdlab.methods._features import MapParams, map_pairs, pair_maps
from kdlab.methods.base import Shapes, StepContext, Term


class NSTParams(MapParams):
    kernel: Literal["linear", "poly", "gaussian"] = "poly"
    degree: int = Field(2, ge=1, description="polynomial kernel degree d")
    c: float = Field(0.0, ge=0.0, description="polynomial kernel offset c")
    sigma2: float = Field(1.0, gt=0.0, description="Gaussian kernel variance sigma^2")


class NeuronSelectivityTransfer(Term[NSTParams]):
    """MMD between normalised channel distributions (arXiv:1707.01219).

    Each channel's spatial map, flattened and L2-normalised, is a sample of the
    layer's "neuron selectivity" distribution; the loss is ``lambda/2 * sum_j MMD^2``
    between the teacher's and the student's sample sets, with lambda the term's weight.
    Kernels: ``linear`` (``x.y``), ``poly`` (``(x.y + c)^d``, the paper's d = 2, c = 0;
    the default, as in the paper's main results), ``gaussian``
    (``exp(-||x-y||^2/(2 sigma2))``). The maps are normalised, so the value does not
    change when a map is upsampled (same statistics) or rescaled.

    The 1/2 is the paper's: RepDistiller (polynomial kernel only) applies its weight to
    the plain sum, so its weight 50 (the CIFAR-100 reference protocol) is this term's
    100; the cifar100 recipes set that. Default weight 1.5 beside ``ce`` at 1: at 50 the
    term's gradient on a fresh student is 60 to 70 times cross-entropy's on the
    Fashion-MNIST pairs (15 to 24 times on digits) and the student ended 4.6 points
    below the label-only one after 8 epochs (the early steps inflate the BN'd conv
    weights and slow all later learning); at 1.5 it is about 2 times and the loss
    helped.

    Channel counts may differ (MMD compares sets). Spatial sizes must match: the larger
    map is average-pooled to the smaller, as in RepDistiller.

    3-D taps: the same idea over positions. Each channel of an ``(N, C, L)`` map
    (``layout: ncl``), or each hidden unit of ``(N, L, H)`` hidden states (``layout:
    nlc``), is one sample: its ``L`` values, L2-normalised (the map viewed as
    ``(N, C, 1, L)``); a longer map is average-pooled along ``L``.
    """

    method = "nst"
    default_weight = 1.5

    def __init__(self, params: NSTParams) -> None:
        super().__init__(params)

    def setup(self, shapes: Shapes) -> None:
        map_pairs(self, shapes)

    def forward(self, ctx: StepContext) -> Tensor:
        p = self.params
        total = ctx.student.logits.new_zeros(())
        for s, t in self.paired_taps():
            fs, ft = pool_to_smaller(*pair_maps(self, ctx, s, t))
            total = total + nst_mmd2(fs, ft, p.kernel, p.degree, p.c, p.sigma2)
        return 0.5 * total
