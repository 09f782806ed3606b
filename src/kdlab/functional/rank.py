"""Rank losses for metric learning: DarkRank's soft and hard transfer, a triplet
loss (the metric loss its students train with) and Recall@K for retrieval.

DarkRank (Chen, Wang & Zhang, AAAI 2018, arXiv:1707.01220) treats every sample of a
batch as a query and the other samples as the list to rank. With the similarity score
``S(q, x) = -alpha * ||q - x||_2^beta`` a list's ranking ``pi`` has the Plackett-Luce
probability (paper, eq. 1)::

    P(pi | X) = prod_{i=1..n} exp(S(x_pi(i))) / sum_{k=i..n} exp(S(x_pi(k)))

- soft transfer: ``KL(P(. | X_teacher) || P(. | X_student))`` over all ``n!`` rankings
  (ListNet); exact here for short lists, or the ListNet top-one approximation
  (a KL between the two softmaxes over the list), which is polynomial.
- hard transfer: ``-log P(pi_teacher | X_student)``, the likelihood under the student of
  the teacher's most probable ranking, i.e. the teacher's sort order (ListMLE).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_EXACT_LIST = 8  # 8! = 40320 permutations: beyond this use the top-one approximation


def pairwise_distances(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between rows, ``(N, D) -> (N, N)``, with a finite gradient
    at zero distance (the diagonal)."""
    sq = x.pow(2).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp_min(eps)
    return d2.sqrt()


def similarity_scores(x: Tensor, alpha: float = 12.25, beta: float = 4.0) -> Tensor:
    """DarkRank's score ``S_ij = -alpha * ||x_i - x_j||^beta`` for every pair."""
    return -alpha * pairwise_distances(x).pow(beta)


def teacher_lists(
    student_scores: Tensor, teacher_scores: Tensor, list_length: int | None = None
) -> tuple[Tensor, Tensor]:
    """Each query's candidates (itself excluded) in the teacher's descending score order,
    cut to the first ``list_length``: ``(student (N, L), teacher (N, L))`` scores."""
    n = teacher_scores.shape[0]
    if n < 2:
        raise ValueError("rank losses need a batch of at least 2 samples")
    eye = torch.eye(n, dtype=torch.bool, device=teacher_scores.device)
    t = teacher_scores.detach().masked_fill(eye, float("-inf"))
    length = n - 1 if list_length is None else min(list_length, n - 1)
    order = t.argsort(dim=1, descending=True)[:, :length]
    return student_scores.gather(1, order), teacher_scores.gather(1, order)


def _suffix_logsumexp(s: Tensor) -> Tensor:
    """``out[..., i] = logsumexp(s[..., i:])``."""
    return torch.logcumsumexp(s.flip(-1), dim=-1).flip(-1)


def plackett_luce_log_prob(scores: Tensor) -> Tensor:
    """Log-probability of the ranking that lists items in the order of the last dim."""
    return (scores - _suffix_logsumexp(scores)).sum(dim=-1)


def listmle_loss(student_list: Tensor, teacher_list: Tensor | None = None) -> Tensor:
    """Hard transfer: ``mean_q -log P_student(teacher's ranking of q's list)``.

    ``student_list`` holds the student's scores already in the teacher's rank order
    (:func:`teacher_lists`); ``teacher_list`` is unused and accepted for symmetry.
    """
    return -plackett_luce_log_prob(student_list).mean()


def listnet_exact_loss(student_list: Tensor, teacher_list: Tensor) -> Tensor:
    """Soft transfer, exact: ``mean_q sum_pi P_t(pi) (log P_t(pi) - log P_s(pi))`` over
    all ``L!`` permutations of each query's list (``L <= 8``)."""
    length = student_list.shape[1]
    if length > MAX_EXACT_LIST:
        raise ValueError(
            f"exact soft transfer over lists of {length} needs {math.factorial(length)} "
            f"permutations; use list_length <= {MAX_EXACT_LIST} or soft_mode 'top1'"
        )
    perms = torch.tensor(
        list(itertools.permutations(range(length))), device=student_list.device
    )  # (P, L)
    log_ps = plackett_luce_log_prob(student_list[:, perms])  # (N, P)
    log_pt = plackett_luce_log_prob(teacher_list[:, perms])
    return (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean()


def listnet_top1_loss(student_list: Tensor, teacher_list: Tensor) -> Tensor:
    """Soft transfer, ListNet's top-one approximation: the KL between the probabilities
    of each item being ranked first, ``softmax`` over the list, averaged over queries."""
    log_ps = F.log_softmax(student_list, dim=1)
    log_pt = F.log_softmax(teacher_list, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean()


def darkrank_loss(
    student: Tensor,
    teacher: Tensor,
    alpha: float = 12.25,
    beta: float = 4.0,
    transfer: str = "soft",
    list_length: int | None = 4,
    soft_mode: str = "exact",
    normalize: bool = True,
) -> Tensor:
    """DarkRank on in-batch neighbour lists of embeddings ``(N, Ds)`` and ``(N, Dt)``.

    Args:
        transfer: ``soft`` (ListNet KL), ``hard`` (ListMLE) or ``both`` (their sum).
        list_length: each query's list is its ``list_length`` nearest neighbours by the
            teacher (``None``: the whole batch).
        soft_mode: ``exact`` (all permutations) or ``top1`` (ListNet approximation).
        normalize: L2-normalise embeddings first (what public implementations do).
    """
    if normalize:
        student, teacher = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    s_list, t_list = teacher_lists(
        similarity_scores(student, alpha, beta),
        similarity_scores(teacher.detach(), alpha, beta),
        list_length,
    )
    losses = []
    if transfer in ("soft", "both"):
        soft = listnet_exact_loss if soft_mode == "exact" else listnet_top1_loss
        losses.append(soft(s_list, t_list))
    if transfer in ("hard", "both"):
        losses.append(listmle_loss(s_list))
    if not losses:
        raise ValueError(f"transfer must be 'soft', 'hard' or 'both', got {transfer!r}")
    return torch.stack(losses).sum()


# ---------------------------------------------------------------- the metric loss


def triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    margin: float = 0.2,
    mining: str = "all",
    normalize: bool = True,
) -> Tensor:
    """In-batch triplet loss (Schroff et al., FaceNet, arXiv:1503.03832) on Euclidean
    distances: ``max(0, d(a, p) - d(a, n) + margin)``.

    ``mining='all'`` averages over every valid triplet that violates the margin
    (batch-all); ``'hard'`` takes each anchor's farthest positive and nearest negative
    (batch-hard, Hermans et al., arXiv:1703.07737). Zero when the batch holds no
    valid triplet.
    """
    if normalize:
        embeddings = F.normalize(embeddings, dim=1)
    d = pairwise_distances(embeddings)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos, neg = same & ~eye, ~same
    if mining == "hard":
        valid = pos.any(dim=1) & neg.any(dim=1)
        if not bool(valid.any()):
            return embeddings.sum() * 0.0
        hardest_pos = d.masked_fill(~pos, float("-inf")).amax(dim=1)
        hardest_neg = d.masked_fill(~neg, float("inf")).amin(dim=1)
        return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()
    if mining != "all":
        raise ValueError(f"mining must be 'all' or 'hard', got {mining!r}")
    # (a, p, n) grid: d(a, p) - d(a, n) + margin where p is a positive and n a negative
    viol = d[:, :, None] - d[:, None, :] + margin
    valid = pos[:, :, None] & neg[:, None, :]
    active = F.relu(viol) * valid
    n_active = ((active > 0) & valid).sum()
    if int(n_active) == 0:
        return embeddings.sum() * 0.0
    return active.sum() / n_active


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def recall_at_k(
    embeddings: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[int, float]:
    """Retrieval Recall@K: the fraction of queries whose ``K`` nearest other samples
    (Euclidean) include one of the same class. Every sample queries all the others."""
    d = pairwise_distances(embeddings.float())
    d.fill_diagonal_(float("inf"))
    kmax = min(max(ks), len(labels) - 1)
    nn_idx = d.topk(kmax, dim=1, largest=False).indices
    hit = labels[nn_idx] == labels[:, None]
    return {k: float(hit[:, : min(k, kmax)].any(dim=1).float().mean()) for k in ks}
