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


def logit_regression(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Ba & Caruana (arXiv:1312.6184), eq. 1: ``1/(2N) sum_n ||z_s(n) - z_t(n)||^2``.

    The paper regresses the teacher's pre-softmax logits with L2. Common code uses
    ``F.mse_loss`` (a mean over classes too), i.e. this value times ``2 / num_classes``.
    """
    diff = student_logits - teacher_logits
    return 0.5 * diff.pow(2).sum(dim=1).mean()
