"""Losses on logits: cross-entropy, Hinton KD, Ba & Caruana logit regression."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy against hard labels, with optional label smoothing.

    ``targets`` may also be a float tensor of class probabilities (soft labels).
    """
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton, Vinyals & Dean (arXiv:1503.02531): soft-target loss at temperature T.

    ``T^2 * mean_n KL(softmax(z_t/T) || softmax(z_s/T))``. KL differs from the paper's
    soft cross-entropy only by the teacher's entropy, a constant with no gradient; the
    ``T^2`` keeps gradient magnitudes comparable across temperatures (paper, sec. 2).
    """
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def logit_regression(
    student_logits: Tensor, teacher_logits: Tensor, reduction: str = "paper"
) -> Tensor:
    """Ba & Caruana (arXiv:1312.6184), eq. 1: ``1/(2N) sum_n ||z_s(n) - z_t(n)||^2``.

    The paper regresses the teacher's pre-softmax logits with L2 (``reduction="paper"``).
    ``"mean"``: ``F.mse_loss``, a mean over classes too (common code: torchdistill,
    Knowledge-Distillation-Zoo), the paper's value times ``2 / num_classes``.
    """
    if reduction not in ("paper", "mean"):
        raise ValueError(f"reduction must be 'paper' or 'mean', got {reduction!r}")
    diff = student_logits - teacher_logits
    if reduction == "mean":
        return diff.pow(2).mean()
    return 0.5 * diff.pow(2).sum(dim=1).mean()


def dkd_parts(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float = 4.0
) -> tuple[Tensor, Tensor]:
    """Per-sample ``(TCKD, NCKD)`` of Zhao et al., Decoupled KD (arXiv:2203.08679), eq. 2-4.

    TCKD is the KL divergence between the binary distributions ``b = [p_target,
    1 - p_target]`` of teacher and student; NCKD the KL divergence between the
    distributions over the non-target classes only (softmax without the target logit).
    Both at temperature T and scaled by ``T^2``, as Hinton KD. With these,
    ``KD = TCKD + (1 - p_target^teacher) * NCKD`` holds exactly (eq. 1).
    """
    t = temperature
    zs, zt = student_logits / t, teacher_logits / t
    b, c = zs.shape
    if c < 2:
        raise ValueError(f"dkd needs at least 2 classes, got {c}")
    tgt = targets.long().view(-1, 1)

    def binary_log_probs(z: Tensor) -> tuple[Tensor, Tensor]:
        lse = z.logsumexp(dim=1)
        log_p_target = z.gather(1, tgt).squeeze(1) - lse
        log_p_rest = z.scatter(1, tgt, float("-inf")).logsumexp(dim=1) - lse
        return log_p_target, log_p_rest

    s_tgt, s_rest = binary_log_probs(zs)
    t_tgt, t_rest = binary_log_probs(zt)
    tckd = t_tgt.exp() * (t_tgt - s_tgt) + t_rest.exp() * (t_rest - s_rest)

    keep = F.one_hot(tgt.view(-1), c).eq(0)  # drop the target column
    ls = F.log_softmax(zs[keep].view(b, c - 1), dim=1)
    lt = F.log_softmax(zt[keep].view(b, c - 1), dim=1)
    nckd = (lt.exp() * (lt - ls)).sum(dim=1)
    return tckd * (t * t), nckd * (t * t)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """Decoupled KD (arXiv:2203.08679), eq. 5: ``mean_n (alpha * TCKD + beta * NCKD)``.

    See :func:`dkd_parts`. Defaults are the paper's CIFAR-100 values (alpha 1, beta 8,
    T 4). mdistiller computes log-probabilities by masking logits with ``-1000``; here
    the target column is dropped and logsumexp is used, the same values without the
    constant.
    """
    tckd, nckd = dkd_parts(student_logits, teacher_logits, targets, temperature)
    return (alpha * tckd + beta * nckd).mean()
