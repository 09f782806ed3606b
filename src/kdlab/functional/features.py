"""Losses on intermediate feature maps: FitNets, AT, NST, AB, FT, FSP.

Every function takes plain tensors of shape ``(N, C, H, W)`` (or ``(N, D)`` where the
method allows vectors) and returns a scalar averaged over the batch. ``(N, C, L)`` maps
(1-D, e.g. a Conv1d's output) are accepted too and read as ``(N, C, 1, L)``: sums over
the ``H*W`` positions become sums over ``L``; the element-wise losses (hint, AB, FT)
never look at the layout. Spatial or channel matching between student and teacher is
the caller's job (see :mod:`kdlab.adapters`), except where the method defines it (FSP
pools inside a layer pair).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import TapError

Reduction = Literal["paper", "mean"]


def _check_same_shape(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise TapError(f"{what}: student {tuple(a.shape)} and teacher {tuple(b.shape)} differ")


def _check_reduction(reduction: str) -> None:
    if reduction not in ("paper", "mean"):
        raise ValueError(f"reduction must be 'paper' or 'mean', got {reduction!r}")


# ------------------------------------------------------------------------- FitNets


def hint_loss(regressed: Tensor, hint: Tensor, reduction: Reduction = "paper") -> Tensor:
    """FitNets (Romero et al., arXiv:1412.6550), the hint loss: ``1/2 ||u_h - r(v_g)||^2``.

    ``regressed`` is the regressor's output on the student's guided layer, ``hint`` the
    teacher's hint layer, same shape. ``reduction="paper"``: the squared norm over all
    non-batch elements, halved, averaged over the batch. ``"mean"``: ``F.mse_loss``
    (RepDistiller, torchdistill), which is the paper's value times ``2 / (C*H*W)``.
    """
    _check_same_shape(regressed, hint, "hint_loss")
    _check_reduction(reduction)
    diff2 = (regressed - hint).pow(2)
    if reduction == "mean":
        return diff2.mean()
    return 0.5 * diff2.flatten(1).sum(1).mean()


# ------------------------------------------------------------------------- AT


def attention_map(feature: Tensor, p: float = 2.0) -> Tensor:
    """AT (arXiv:1612.03928), sec. 3.1: ``F(A) = sum_c |A_c|^p``, shape ``(N, H, W)``.

    Not yet flattened or normalised (see :func:`attention_transfer`), so callers can pool
    maps of different resolutions first. An ``(N, C, L)`` map gives ``(N, L)``: attention
    over positions.
    """
    if feature.dim() not in (3, 4):
        raise TapError(
            "attention needs an (N, C, H, W) or (N, C, L) feature map, got shape "
            f"{tuple(feature.shape)}"
        )
    return feature.abs().pow(p).sum(dim=1)


def attention_transfer(
    student: Tensor, teacher: Tensor, p: float = 2.0, squared: bool = True
) -> Tensor:
    """AT, eq. 2 for one layer pair, without the ``beta/2`` factor.

    ``Q = vec(sum_c |A_c|^p)``, compared after L2 normalisation: with ``d_n =
    Q_s/||Q_s||_2 - Q_t/||Q_t||_2`` for sample n of a map with ``H*W`` positions,

    - ``squared=True`` (default): ``mean_n ||d_n||_2^2 / (H*W)``, the authors' code
      (``(at(x) - at(y)).pow(2).mean()``) and what the paper's beta = 1000 "divided by
      the number of elements in the attention map and batch size" refers to;
    - ``squared=False``: ``mean_n ||d_n||_2 / (H*W)``, eq. 2 read literally (norm type
      p = 2, not squared).

    The paper writes ``sum_c``, its code ``mean_c``; the normalisation makes the two
    identical. Student and teacher maps must share ``H, W`` (or ``L`` for ``(N, C, L)``
    maps, where the division is by ``L``).
    """
    qs, qt = attention_map(student, p), attention_map(teacher, p)
    if qs.shape[1:] != qt.shape[1:]:
        raise TapError(
            f"attention_transfer: student map {tuple(qs.shape[1:])} and teacher map "
            f"{tuple(qt.shape[1:])} differ; pool one to the other first"
        )
    return attention_distance(qs.flatten(1), qt.flatten(1), squared)


def attention_distance(
    qs: Tensor, qt: Tensor, squared: bool = True, per_position: bool = True
) -> Tensor:
    """The AT distance between flattened attention maps ``(N, H*W)`` (see above).

    ``per_position=False`` leaves out the division by ``H*W``: the distance of two unit
    vectors, whose value does not change when a map is upsampled (same statistics).
    """
    d = F.normalize(qs, dim=1) - F.normalize(qt, dim=1)
    per_sample = d.pow(2).sum(1) if squared else d.norm(dim=1)
    return per_sample.mean() / (qs.shape[1] if per_position else 1)


# ------------------------------------------------------------------------- NST

Kernel = Literal["linear", "poly", "gaussian"]


def _gram(a: Tensor, b: Tensor, kernel: Kernel, degree: int, c: float, sigma2: float) -> Tensor:
    """Kernel matrix ``k(a_i, b_j)`` for batched row sets ``(N, I, D)`` and ``(N, J, D)``."""
    dot = a @ b.transpose(1, 2)
    if kernel == "linear":
        return dot
    if kernel == "poly":
        return (dot + c).pow(degree)
    if kernel == "gaussian":
        sq = a.pow(2).sum(-1)[:, :, None] + b.pow(2).sum(-1)[:, None, :] - 2 * dot
        return torch.exp(-sq.clamp_min(0) / (2 * sigma2))
    raise ValueError(f"kernel must be 'linear', 'poly' or 'gaussian', got {kernel!r}")


def nst_mmd2(
    student: Tensor,
    teacher: Tensor,
    kernel: Kernel = "poly",
    degree: int = 2,
    c: float = 0.0,
    sigma2: float = 1.0,
) -> Tensor:
    """NST (Huang & Wang, arXiv:1707.01219): squared MMD between channel sets.

    Each channel's ``H*W`` map is one sample, L2-normalised: ``f^i = vec(F_i)/||vec(F_i)||``.
    With teacher channels ``f_T^i`` (``C_T`` of them) and student channels ``f_S^j``::

        MMD^2 = mean_{i,i'} k(f_T^i, f_T^i') + mean_{j,j'} k(f_S^j, f_S^j')
                - 2 mean_{i,j} k(f_T^i, f_S^j)

    averaged over the batch. Kernels (paper, sec. 3.3): linear ``x.y``, polynomial
    ``(x.y + c)^d`` (paper: d = 2, c = 0), Gaussian ``exp(-||x-y||^2 / (2 sigma^2))``.
    Channel counts may differ; ``H, W`` must match. ``(N, C, L)`` maps: each channel's
    ``L`` values are one sample; ``L`` must match. The paper's loss is
    ``lambda/2 * MMD^2``; the 1/2 is the method's, not this function's.
    """
    if student.dim() not in (3, 4) or teacher.dim() != student.dim():
        raise TapError(
            "nst_mmd2 needs two (N, C, H, W) or two (N, C, L) maps, got student "
            f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}"
        )
    if student.shape[2:] != teacher.shape[2:] or student.shape[0] != teacher.shape[0]:
        raise TapError(
            f"nst_mmd2: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
            "need the same batch and spatial size"
        )
    fs = F.normalize(student.flatten(2), dim=2)
    ft = F.normalize(teacher.flatten(2), dim=2)
    ktt = _gram(ft, ft, kernel, degree, c, sigma2).mean(dim=(1, 2))
    kss = _gram(fs, fs, kernel, degree, c, sigma2).mean(dim=(1, 2))
    kts = _gram(ft, fs, kernel, degree, c, sigma2).mean(dim=(1, 2))
    return (ktt + kss - 2 * kts).mean()


# ------------------------------------------------------------------------- AB


def activation_boundary_loss(
    student: Tensor, teacher: Tensor, margin: float = 1.0, reduction: Reduction = "paper"
) -> Tensor:
    """AB (Heo et al., arXiv:1811.03233): the margin-based alternative loss.

    On pre-activations, with ``rho(t) = 1[t > 0]``, ``sigma = ReLU`` and margin ``mu``::

        || rho(T) * sigma(mu - r(S)) + (1 - rho(T)) * sigma(mu + r(S)) ||_2^2

    i.e. where the teacher's neuron fires, the student's (connector output) must reach
    ``+mu``; where it does not, ``-mu``. ``reduction="paper"``: the squared norm over all
    non-batch elements (the paper, the authors' code, RepDistiller), averaged over the
    batch; ``"mean"``: the mean over every element, i.e. that divided by ``C*H*W``, a
    value that does not grow with the map. ``student`` is the connector output ``r(S)``.
    RepDistiller additionally weighs layer i of n by ``2^(i-n+1)`` and scales
    by ``3/1000``; that belongs to the method's weights, not here.
    """
    _check_same_shape(student, teacher, "activation_boundary_loss")
    _check_reduction(reduction)
    fire = (teacher > 0).to(student.dtype)
    hinge = fire * F.relu(margin - student) + (1 - fire) * F.relu(margin + student)
    if reduction == "mean":
        return hinge.pow(2).mean()
    return hinge.pow(2).flatten(1).sum(1).mean()


# ------------------------------------------------------------------------- FT


FTReduction = Literal["paper", "mean", "sqrt"]


def factor_transfer(
    student_factor: Tensor, teacher_factor: Tensor, p: int = 1, reduction: FTReduction = "mean"
) -> Tensor:
    """FT (Kim, Park & Kwak, arXiv:1802.04977): ``|| F_T/||F_T|| - F_S/||F_S|| ||_p``.

    Factors are vectorised per sample (``n`` elements) and L2-normalised; the paper uses
    p = 1. ``reduction="paper"``: the p-norm of each sample's difference, averaged over
    the batch (the formula read literally), which grows like ``sqrt(n)`` for maps of the
    same statistics. ``"mean"`` (default): the mean of ``|d|^p`` over all elements, what
    the authors' code ran (``nn.L1Loss`` on normalised factors, beta 500), which shrinks
    like ``1/sqrt(n)``. ``"sqrt"``: the per-sample p-norm divided by ``n^(1/p - 1/2)``
    (for p = 1, ``||d||_1 / sqrt(n)``), unchanged when the factor map is upsampled.
    """
    _check_same_shape(student_factor, teacher_factor, "factor_transfer")
    if reduction not in ("paper", "mean", "sqrt"):
        raise ValueError(f"reduction must be 'paper', 'mean' or 'sqrt', got {reduction!r}")
    fs = F.normalize(student_factor.flatten(1), dim=1)
    ft = F.normalize(teacher_factor.flatten(1), dim=1)
    d = (ft - fs).abs().pow(p)
    if reduction == "mean":
        return d.mean()
    norm = d.sum(1).pow(1.0 / p)
    if reduction == "sqrt":
        norm = norm / d.shape[1] ** (1.0 / p - 0.5)
    return norm.mean()


def reconstruction_loss(reconstruction: Tensor, target: Tensor) -> Tensor:
    """FT paraphraser pre-training: ``||x - P(x)||^2`` as a mean over elements.

    The paper writes the squared L2 norm; RepDistiller uses ``MSELoss`` (a mean),
    kept here since this loss drives its own stage alone (the scale only sets the step).
    """
    _check_same_shape(reconstruction, target, "reconstruction_loss")
    return F.mse_loss(reconstruction, target)


# ------------------------------------------------------------------------- FSP


def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    """FSP (Yim et al., CVPR 2017): ``G_ij = sum_{s,t} F1_{s,t,i} F2_{s,t,j} / (h*w)``.

    ``first`` (N, C1, h, w) and ``second`` (N, C2, h', w'): when the spatial sizes differ
    the larger map is average-pooled to the smaller one (the paper pairs layers of equal
    size; RepDistiller pools the same way). Returns ``(N, C1, C2)``. Two ``(N, C, L)`` maps
    give the Gram over positions, ``sum_l F1_{l,i} F2_{l,j} / L``.
    """
    if first.dim() not in (3, 4) or second.dim() != first.dim():
        raise TapError(
            "fsp_matrix needs two (N, C, H, W) or two (N, C, L) maps, got "
            f"{tuple(first.shape)} and {tuple(second.shape)}"
        )
    first, second = pool_to_smaller(_as_2d(first), _as_2d(second))
    h, w = first.shape[2:]
    return first.flatten(2) @ second.flatten(2).transpose(1, 2) / (h * w)


def fsp_loss(student_g: Tensor, teacher_g: Tensor, reduction: Reduction = "paper") -> Tensor:
    """FSP loss for one layer pair: ``mean_n ||G_T - G_S||_2^2`` (squared Frobenius).

    ``reduction="paper"``: summed over the ``C1 x C2`` entries; ``"mean"``: averaged over
    them (RepDistiller), i.e. the paper's value divided by ``C1*C2``.
    """
    _check_same_shape(student_g, teacher_g, "fsp_loss")
    _check_reduction(reduction)
    d2 = (teacher_g - student_g).pow(2)
    return d2.mean() if reduction == "mean" else d2.flatten(1).sum(1).mean()


# ------------------------------------------------------------------------- helpers


def _as_2d(x: Tensor) -> Tensor:
    """An ``(N, C, L)`` map as ``(N, C, 1, L)``; 4-D maps unchanged."""
    return x.unsqueeze(2) if x.dim() == 3 else x


def pool_to_smaller(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool whichever of two (N, C, H, W) maps is larger to the other's size
    (two ``(N, C, L)`` maps: along ``L``)."""
    if a.dim() == 3 and b.dim() == 3:
        a2, b2 = pool_to_smaller(a.unsqueeze(2), b.unsqueeze(2))
        return a2.squeeze(2), b2.squeeze(2)
    ha, wa = a.shape[2:]
    hb, wb = b.shape[2:]
    if (ha, wa) == (hb, wb):
        return a, b
    size = (min(ha, hb), min(wa, wb))
    if (ha, wa) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if (hb, wb) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b
