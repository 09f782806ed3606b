"""Relation and representation losses: PKT, SP, CC, VID, RKD, CRD's NCE.

Each function takes plain tensors (a batch of student and teacher features; any
trailing shape is flattened where the method works on vectors) and returns a scalar.
Docstrings give the paper's formula and the reduction used; where the paper sums and a
reference implementation averages, the average is kept so that the reference
protocol's loss weights (../shared/references.md) mean the same thing here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import TapError


def _flat(f: Tensor) -> Tensor:
    return f.reshape(f.shape[0], -1)


def _check_batch(fs: Tensor, ft: Tensor, what: str) -> None:
    if fs.shape[0] != ft.shape[0]:
        raise TapError(
            f"{what}: student batch {fs.shape[0]} != teacher batch {ft.shape[0]}; "
            "relational losses compare the same samples"
        )


# ----------------------------------------------------------------------------- PKT


def cosine_kernel(f: Tensor, eps: float = 1e-7) -> Tensor:
    """PKT's kernel ``K(a, b) = (cos(a, b) + 1) / 2`` in [0, 1], for every pair of rows."""
    f = _flat(f)
    f = f / (f.norm(dim=1, keepdim=True) + eps)
    return (f @ f.t() + 1.0) / 2.0


def pkt_loss(fs: Tensor, ft: Tensor, eps: float = 1e-7, include_self: bool = False) -> Tensor:
    """Passalis & Tefas, Probabilistic Knowledge Transfer (arXiv:1803.10837), eq. 5-8.

    Conditional probabilities ``p_{j|i} = K(x_i, x_j) / sum_{k != i} K(x_i, x_k)`` from the
    cosine kernel (eq. 8) for teacher (p) and student (q), then
    ``sum_i sum_{j != i} p_{j|i} log(p_{j|i} / q_{j|i})`` (eq. 7), with ``eps`` inside the
    logs. The paper's sum is divided by ``b^2``: RepDistiller averages over the ``b x b``
    matrix, and the reference weight 30000 is calibrated for that.

    ``include_self=True`` keeps ``k = i`` in the normalisation, as RepDistiller does (the
    paper excludes it).
    """
    _check_batch(fs, ft, "pkt")
    b = fs.shape[0]
    ks, kt = cosine_kernel(fs, eps), cosine_kernel(ft, eps)
    if not include_self:
        off = 1.0 - torch.eye(b, dtype=ks.dtype, device=ks.device)
        ks, kt = ks * off, kt * off
    q = ks / ks.sum(dim=1, keepdim=True)
    p = kt / kt.sum(dim=1, keepdim=True)
    kl = p * (torch.log(p + eps) - torch.log(q + eps))
    return kl.sum() / (b * b)


# ----------------------------------------------------------------------------- SP


def similarity_matrix(f: Tensor) -> Tensor:
    """SP's ``G = Q Q^T`` with each row L2-normalised (Tung & Mori, eq. 1-2)."""
    q = _flat(f)
    return F.normalize(q @ q.t(), p=2, dim=1)


def similarity_preserving_loss(fs: Tensor, ft: Tensor) -> Tensor:
    """Tung & Mori, Similarity-Preserving KD (arXiv:1907.09682), eq. 3-4, one layer pair.

    ``||G_t - G_s||_F^2 / b^2`` with ``G`` from :func:`similarity_matrix`; channel and
    spatial sizes of the two features may differ (only ``b x b`` matrices are compared).
    A recipe with several pairs sums this over them (eq. 4).
    """
    _check_batch(fs, ft, "sp")
    b = fs.shape[0]
    diff = similarity_matrix(ft) - similarity_matrix(fs)
    return diff.pow(2).sum() / (b * b)


# ----------------------------------------------------------------------------- CC


def taylor_rbf_kernel(f: Tensor, gamma: float = 0.4, order: int = 2) -> Tensor:
    """Gaussian RBF ``exp(-gamma ||f_i - f_j||^2)`` on L2-normalised rows, by Taylor series.

    For unit vectors ``||f_i - f_j||^2 = 2 - 2 f_i.f_j``, so the kernel is
    ``exp(-2 gamma) exp(2 gamma f_i.f_j) ~ sum_{p=0}^{P} exp(-2 gamma) (2 gamma)^p / p!
    (f_i.f_j)^p`` (Peng et al., eq. 9-10).
    """
    f = F.normalize(_flat(f), p=2, dim=1)
    cos = f @ f.t()
    out = torch.zeros_like(cos)
    for p in range(order + 1):
        coef = math.exp(-2.0 * gamma) * (2.0 * gamma) ** p / math.factorial(p)
        out = out + coef * cos.pow(p)
    return out


def correlation_congruence_loss(
    fs: Tensor, ft: Tensor, gamma: float = 0.4, order: int = 2
) -> Tensor:
    """Peng et al., Correlation Congruence for KD (arXiv:1904.01802), eq. 5.

    ``||psi(F_t) - psi(F_s)||_F^2 / b^2`` where ``psi`` is the ``b x b`` correlation matrix
    of :func:`taylor_rbf_kernel` (paper: P = 2; gamma 0.4 as in Knowledge-Distillation-Zoo,
    AberHu's third-party re-implementation: the authors released no code). Feature widths
    may differ.
    """
    _check_batch(fs, ft, "cc")
    b = fs.shape[0]
    diff = taylor_rbf_kernel(ft, gamma, order) - taylor_rbf_kernel(fs, gamma, order)
    return diff.pow(2).sum() / (b * b)


# ----------------------------------------------------------------------------- VID


def vid_nll(target: Tensor, mean: Tensor, variance: Tensor) -> Tensor:
    """Ahn et al., Variational Information Distillation (arXiv:1904.05835), eq. 5.

    Negative log-likelihood of the teacher feature under a Gaussian with the student's
    predicted ``mean`` and a learned ``variance`` (broadcast over ``target``), without
    its constant ``log(2 pi) / 2``: ``mean over elements of
    log(sigma) + (t - mu)^2 / (2 sigma^2)``. The paper sums over C, H, W; the average
    is what the reference weight 1 was tuned for (RepDistiller).
    """
    if target.shape != mean.shape:
        raise TapError(
            f"vid: teacher feature {tuple(target.shape)} != regressed {tuple(mean.shape)}"
        )
    nll = 0.5 * torch.log(variance) + (target - mean).pow(2) / (2.0 * variance)
    return nll.mean()


# ----------------------------------------------------------------------------- RKD


def pairwise_distances(f: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between rows, with an exact zero diagonal."""
    f = _flat(f)
    sq = f.pow(2).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * f @ f.t()).clamp(min=eps)
    d = d2.sqrt()
    return d * (1.0 - torch.eye(d.shape[0], dtype=d.dtype, device=d.device))


def rkd_distance_loss(fs: Tensor, ft: Tensor) -> Tensor:
    """Park et al., Relational KD (arXiv:1904.05068), distance-wise loss (eq. 4-5).

    ``psi_D(i, j) = ||f_i - f_j|| / mu`` with ``mu`` the mean distance over pairs
    ``i != j``; Huber loss (delta 1) between teacher and student ``psi_D``, averaged over
    the ``b x b`` entries as the authors' code does (the paper writes a sum).
    """
    _check_batch(fs, ft, "rkd")
    b = fs.shape[0]
    if b < 2:
        raise TapError("rkd: the distance loss needs a batch of at least 2 samples")
    n_pairs = b * (b - 1)
    with torch.no_grad():
        dt = pairwise_distances(ft)
        dt = dt / (dt.sum() / n_pairs)
    ds = pairwise_distances(fs)
    ds = ds / (ds.sum() / n_pairs)
    return F.smooth_l1_loss(ds, dt, reduction="mean", beta=1.0)


def angle_matrix(f: Tensor) -> Tensor:
    """``A[j, i, k]``: cos of the angle at ``f_j`` between ``f_i`` and ``f_k`` (0 if i or k = j)."""
    f = _flat(f)
    e = F.normalize(f[None, :, :] - f[:, None, :], p=2, dim=2)  # e[j, i] = unit(f_i - f_j)
    return torch.bmm(e, e.transpose(1, 2))


def rkd_angle_loss(fs: Tensor, ft: Tensor) -> Tensor:
    """Park et al. (arXiv:1904.05068), angle-wise loss (eq. 6-7).

    ``psi_A(i, j, k) = <e_ij, e_kj>``, ``e_ij = (f_i - f_j) / ||f_i - f_j||``; Huber loss
    between teacher and student, averaged over the ``b^3`` triplets (authors' code).
    """
    _check_batch(fs, ft, "rkd")
    with torch.no_grad():
        at = angle_matrix(ft)
    return F.smooth_l1_loss(angle_matrix(fs), at, reduction="mean", beta=1.0)


def rkd_loss(
    fs: Tensor, ft: Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0
) -> Tensor:
    """``distance_weight * L_D + angle_weight * L_A`` (paper: 25 and 50); a zero weight skips."""
    loss = fs.new_zeros(())
    if distance_weight:
        loss = loss + distance_weight * rkd_distance_loss(fs, ft)
    if angle_weight:
        loss = loss + angle_weight * rkd_angle_loss(fs, ft)
    return loss


# ----------------------------------------------------------------------------- CRD


def crd_nce_loss(scores: Tensor, num_data: int, eps: float = 1e-7) -> Tensor:
    """Tian et al., Contrastive Representation Distillation (arXiv:1910.10699), eq. 19-20.

    ``scores`` is ``(b, 1 + N)``: column 0 the positive pair, the rest ``N`` negatives,
    each ``exp(<g_a, g_m> / tau) / Z`` (an unnormalised density ratio). With
    ``h = s / (s + N / M)`` (``M = num_data``, the noise being uniform over the data),
    the loss is ``-(sum_b log h_pos + sum_{b, negatives} log(1 - h_neg)) / b``: noise
    contrastive estimation with N noise samples per positive.
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise TapError(f"crd: scores must be (batch, 1 + negatives), got {tuple(scores.shape)}")
    b, n_neg = scores.shape[0], scores.shape[1] - 1
    noise = n_neg / float(num_data)  # N * P_noise(x), P_noise uniform = 1/M
    pos, neg = scores[:, 0], scores[:, 1:]
    log_h_pos = torch.log(pos / (pos + noise + eps))
    log_1m_h_neg = torch.log(noise / (neg + noise + eps))
    return -(log_h_pos.sum() + log_1m_h_neg.sum()) / b
