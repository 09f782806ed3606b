"""Cross quality distillation: soft targets from a clean input, learnt on a degraded one."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def soft_cross_entropy(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0
) -> Tensor:
    """Su & Maji (arXiv:1604.00433), the distillation half of the CQD objective:

    ``mean_n  -sum_k softmax(z_t(n)/T)_k * log softmax(z_s(n)/T)_k``

    with ``z_t`` the teacher's logits on the clean input ``x`` and ``z_s`` the student's
    on the degraded ``g(x)``. A cross-entropy, not a KL divergence (which is smaller by
    the teacher's entropy: same gradient), with no ``T^2`` factor.
    """
    t = temperature
    p_t = F.softmax(teacher_logits / t, dim=1)
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    return -(p_t * log_p_s).sum(dim=1).mean()
