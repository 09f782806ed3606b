"""DarkRank soft/hard transfer, the triplet loss and Recall@K against numpy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from kdlab.config import load_config
from kdlab.errors import ConfigError
from kdlab.functional import rank as R
from kdlab.methods import build_term


def _emb(seed: int, n: int = 6, d: int = 3) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _np_scores(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    n = len(x)
    s = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            s[i, j] = -alpha * np.linalg.norm(x[i] - x[j]) ** beta
    return s


def _np_pl_logprob(scores: list[float]) -> float:
    """Plackett-Luce log-probability of listing the items in the given order."""
    out = 0.0
    for i in range(len(scores)):
        rest = np.array(scores[i:])
        out += scores[i] - np.log(np.exp(rest).sum())
    return out


def _np_lists(s: np.ndarray, t: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(s)
    ls, lt = [], []
    for q in range(n):
        cand = [j for j in range(n) if j != q]
        cand.sort(key=lambda j: -t[q, j])
        cand = cand[:length]
        ls.append([s[q, j] for j in cand])
        lt.append([t[q, j] for j in cand])
    return np.array(ls), np.array(lt)


def test_scores_match_numpy() -> None:
    x = _emb(0)
    np.testing.assert_allclose(
        R.similarity_scores(x, 2.0, 3.0).numpy(), _np_scores(x.numpy(), 2.0, 3.0), atol=1e-5
    )


@pytest.mark.parametrize("length", [3, 4])
def test_hard_and_soft_match_bruteforce(length: int) -> None:
    xs, xt = _emb(1), _emb(2)
    a, b = 1.5, 2.0
    s_np, t_np = _np_scores(xs.numpy(), a, b), _np_scores(xt.numpy(), a, b)
    ls, lt = _np_lists(s_np, t_np, length)
    hard_ref = np.mean([-_np_pl_logprob(list(r)) for r in ls])
    soft_ref = 0.0
    for rs, rt in zip(ls, lt):
        for perm in itertools.permutations(range(length)):
            lpt = _np_pl_logprob([rt[p] for p in perm])
            lps = _np_pl_logprob([rs[p] for p in perm])
            soft_ref += np.exp(lpt) * (lpt - lps)
    soft_ref /= len(ls)
    top1_ref = 0.0
    for rs, rt in zip(ls, lt):
        pt = np.exp(rt - rt.max()) / np.exp(rt - rt.max()).sum()
        ps = np.exp(rs - rs.max()) / np.exp(rs - rs.max()).sum()
        top1_ref += (pt * np.log(pt / ps)).sum()
    top1_ref /= len(ls)
    kw = dict(alpha=a, beta=b, list_length=length, normalize=False)
    assert float(R.darkrank_loss(xs, xt, transfer="hard", **kw)) == pytest.approx(hard_ref, 1e-6)
    assert float(R.darkrank_loss(xs, xt, transfer="soft", **kw)) == pytest.approx(soft_ref, 1e-6)
    top1 = R.darkrank_loss(xs, xt, transfer="soft", soft_mode="top1", **kw)
    assert float(top1) == pytest.approx(top1_ref, 1e-6)
    both = R.darkrank_loss(xs, xt, transfer="both", **kw)
    assert float(both) == pytest.approx(hard_ref + soft_ref, 1e-6)


def test_exact_soft_probabilities_sum_to_one() -> None:
    scores = torch.randn(3, 4, dtype=torch.float64)
    perms = torch.tensor(list(itertools.permutations(range(4))))
    total = R.plackett_luce_log_prob(scores[:, perms]).exp().sum(dim=1)
    torch.testing.assert_close(total, torch.ones(3, dtype=torch.float64))


def test_soft_is_zero_and_hard_minimal_when_rankings_agree() -> None:
    x = _emb(3, n=8)
    for mode in ("exact", "top1"):
        z = R.darkrank_loss(x, x.clone(), transfer="soft", soft_mode=mode)
        assert float(z) == pytest.approx(0.0, abs=1e-10)
    # hard: the teacher's own ranking is the student's most likely one, so a student
    # equal to the teacher scores lower than one whose neighbours are shuffled
    same = float(R.darkrank_loss(x, x, transfer="hard", list_length=None, normalize=False))
    shuffled = x[torch.randperm(8, generator=torch.Generator().manual_seed(0))]
    other = float(R.darkrank_loss(shuffled, x, transfer="hard", list_length=None, normalize=False))
    assert same < other
    # and with the same ranking, sharper scores (a scaled embedding) approach zero
    sharp = float(R.darkrank_loss(4 * x, x, transfer="hard", list_length=None, normalize=False))
    assert sharp < same and sharp < 1e-3


def test_gradients_flow_to_student_only_and_are_finite() -> None:
    s = _emb(4).requires_grad_(True)
    t = _emb(5).requires_grad_(True)
    loss = R.darkrank_loss(s, t, transfer="both")
    loss.backward()
    assert s.grad is not None and bool(torch.isfinite(s.grad).all()) and s.grad.abs().sum() > 0
    assert t.grad is None or float(t.grad.abs().sum()) == 0.0
    small = _emb(6, n=5, d=2).requires_grad_(True)
    target = _emb(7, n=5, d=2)
    assert torch.autograd.gradcheck(
        lambda e: R.darkrank_loss(e, target, transfer="both", list_length=3), (small,)
    )


def test_exact_soft_rejects_long_lists() -> None:
    with pytest.raises(ValueError, match="permutations"):
        R.listnet_exact_loss(torch.zeros(2, 9), torch.zeros(2, 9))
    with pytest.raises(ConfigError, match="list_length"):
        build_term({"method": "darkrank", "list_length": 20})
    build_term({"method": "darkrank", "list_length": 20, "soft_mode": "top1"})
    build_term({"method": "darkrank", "list_length": None, "transfer": "hard"})


def test_triplet_matches_bruteforce() -> None:
    x = _emb(8, n=7, d=4)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 0])
    xn = (x / x.norm(dim=1, keepdim=True)).numpy()
    d = np.linalg.norm(xn[:, None] - xn[None], axis=2)
    m = 0.3
    viol = []
    hard = []
    for a in range(7):
        pos = [p for p in range(7) if p != a and y[p] == y[a]]
        neg = [n for n in range(7) if y[n] != y[a]]
        for p in pos:
            for n in neg:
                v = d[a, p] - d[a, n] + m
                if v > 0:
                    viol.append(v)
        if pos and neg:
            hard.append(max(0.0, max(d[a, pos]) - min(d[a, neg]) + m))
    assert float(R.triplet_loss(x, y, m, "all")) == pytest.approx(np.mean(viol), 1e-6)
    assert float(R.triplet_loss(x, y, m, "hard")) == pytest.approx(np.mean(hard), 1e-6)
    lone = R.triplet_loss(x[:3], torch.tensor([0, 1, 2]), m)
    assert float(lone) == 0.0


def test_recall_at_k_hand_example() -> None:
    # 1-D points: 0 and 0.1 are class 0; 1.0 class 1; 1.05 and 5 class 2
    e = torch.tensor([[0.0], [0.1], [1.0], [1.05], [5.0]])
    y = torch.tensor([0, 0, 1, 2, 2])
    r = R.recall_at_k(e, y, ks=(1, 2, 4))
    # nearest neighbours: 0->1 hit, 1->0 hit, 2->3 miss, 3->2 miss, 4->3 hit
    assert r[1] == pytest.approx(3 / 5)
    # top-2: 2 -> {3, 1} miss (class 1 has no other member), 3 -> {2, 1} miss
    assert r[2] == pytest.approx(3 / 5)
    assert r[4] == pytest.approx(4 / 5)


def test_darkrank_recipe_and_term_on_model_outputs() -> None:
    cfg = load_config("configs/digits/darkrank.yaml")
    assert [t["method"] for t in cfg.distill.terms] == ["triplet", "darkrank"]
    from kdlab.distiller import Distiller
    from kdlab.methods import build_terms
    from kdlab.models import create_model

    torch.manual_seed(0)
    s, t = create_model("embed_small", 5, 1), create_model("embed_medium", 5, 1)
    x = torch.randn(16, 1, 8, 8)
    y = torch.arange(16) % 5
    terms = build_terms(
        [{"method": "triplet"}, {"method": "darkrank", "student": ["fc:input"], "transfer": "both"}]
    )
    d = Distiller(s, t, terms, example_input=x)
    out = d(x, y)
    assert set(out.losses) == {"triplet", "darkrank"}
    out.total.backward()
    assert all(p.grad is not None for p in s.parameters())
