"""Relation / representation losses (PKT, SP, CC, VID, RKD, CRD) and DKD.

Each functional loss is checked against an independent computation (numpy loops written
from the paper's formula, or a hand-worked example with exact numbers), then the
invariances the method implies, then the terms inside a Distiller: gradients reach the
student and the heads, never the teacher.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdlab.distiller import Distiller
from kdlab.errors import ConfigError, DataError, TapError
from kdlab.functional.logits import dkd_loss, dkd_parts, kd_loss
from kdlab.functional.relations import (
    correlation_congruence_loss,
    crd_nce_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
    similarity_preserving_loss,
    taylor_rbf_kernel,
    vid_nll,
)
from kdlab.memory import ContrastMemory, bank_dots
from kdlab.methods import build_term
from kdlab.methods.dkd import warmup_factor
from kdlab.models import create_model

torch.set_default_dtype(torch.float32)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# ------------------------------------------------------------------------------ PKT


def np_pkt(fs: np.ndarray, ft: np.ndarray, eps: float, include_self: bool) -> float:
    """The paper's eq. 7-8 with explicit loops."""
    b = fs.shape[0]

    def cond(f: np.ndarray) -> np.ndarray:
        k = np.zeros((b, b))
        for i in range(b):
            for j in range(b):
                cos = f[i] @ f[j] / ((np.linalg.norm(f[i]) + eps) * (np.linalg.norm(f[j]) + eps))
                k[i, j] = (cos + 1) / 2
        if not include_self:
            np.fill_diagonal(k, 0.0)
        return k / k.sum(axis=1, keepdims=True)

    p, q = cond(ft), cond(fs)
    total = 0.0
    for i in range(b):
        for j in range(b):
            if i != j or include_self:
                total += p[i, j] * (math.log(p[i, j] + eps) - math.log(q[i, j] + eps))
    return total / b**2


@pytest.mark.parametrize("include_self", [False, True])
def test_pkt_matches_loops(include_self: bool) -> None:
    fs, ft = rand(6, 5, seed=1), rand(6, 9, seed=2)
    got = pkt_loss(fs, ft, 1e-7, include_self)
    want = np_pkt(fs.numpy(), ft.numpy(), 1e-7, include_self)
    assert got.item() == pytest.approx(want, rel=1e-9)
    assert got.item() > 1e-4


def test_pkt_hand_example() -> None:
    # Teacher: e1, e1, e2 -> K rows off-diagonal (1, 1/2), (1, 1/2), (1/2, 1/2).
    # Student: e1, e2, e2 -> (1/2, 1/2), (1/2, 1), (1/2, 1).
    ft = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    fs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    # p rows: (2/3, 1/3), (2/3, 1/3), (1/2, 1/2); q rows: (1/2, 1/2), (1/3, 2/3), (1/3, 2/3)
    kl0 = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    kl1 = 2 / 3 * math.log(2) + 1 / 3 * math.log(1 / 2)
    kl2 = 1 / 2 * math.log(3 / 2) + 1 / 2 * math.log(3 / 4)
    assert pkt_loss(fs, ft, eps=1e-12).item() == pytest.approx((kl0 + kl1 + kl2) / 9, rel=1e-9)


def test_pkt_invariances() -> None:
    fs, ft = rand(8, 6, seed=3), rand(8, 4, seed=4)
    base = pkt_loss(fs, ft)
    assert pkt_loss(fs * 7.5, ft * 0.1).item() == pytest.approx(base.item(), rel=1e-5)
    assert pkt_loss(ft, ft).item() == pytest.approx(0.0, abs=1e-12)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    assert pkt_loss(fs[perm], ft[perm]).item() == pytest.approx(base.item(), rel=1e-9)


# ------------------------------------------------------------------------------ SP


def test_sp_hand_example() -> None:
    # G_s = I; G_t rows (1, 1)/sqrt(2): ||G_t - G_s||^2 = 4 - 2 sqrt(2), over b^2 = 4.
    fs = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    ft = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert similarity_preserving_loss(fs, ft).item() == pytest.approx(1 - math.sqrt(2) / 2)


def test_sp_matches_numpy_and_invariances() -> None:
    fs, ft = rand(5, 3, 4, 4, seed=5), rand(5, 7, 2, 2, seed=6)
    qs, qt = fs.reshape(5, -1).numpy(), ft.reshape(5, -1).numpy()
    gs, gt = qs @ qs.T, qt @ qt.T
    gs = gs / np.linalg.norm(gs, axis=1, keepdims=True)
    gt = gt / np.linalg.norm(gt, axis=1, keepdims=True)
    want = ((gt - gs) ** 2).sum() / 25
    got = similarity_preserving_loss(fs, ft)
    assert got.item() == pytest.approx(want, rel=1e-9)
    assert similarity_preserving_loss(fs * 30.0, ft * 1e-3).item() == pytest.approx(want, rel=1e-6)
    assert similarity_preserving_loss(ft, ft).item() == pytest.approx(0.0, abs=1e-14)


# ------------------------------------------------------------------------------ CC


def test_taylor_kernel_converges_to_rbf() -> None:
    f = rand(6, 4, seed=7)
    u = F.normalize(f, dim=1).numpy()
    d2 = ((u[:, None, :] - u[None, :, :]) ** 2).sum(-1)
    rbf = np.exp(-0.4 * d2)
    assert np.allclose(taylor_rbf_kernel(f, 0.4, order=15).numpy(), rbf, atol=1e-12)
    # order 2 is the truncation exp(-2g) (1 + 2g c + (2g c)^2 / 2): error below the next term
    c = u @ u.T
    p2 = math.exp(-0.8) * (1 + 0.8 * c + 0.32 * c**2)
    assert np.allclose(taylor_rbf_kernel(f, 0.4, order=2).numpy(), p2, atol=1e-12)
    assert np.abs(p2 - rbf).max() < math.exp(-0.8) * 0.8**3 / 6 * math.exp(0.8) + 1e-12


def test_cc_hand_example() -> None:
    # Student: two orthogonal unit vectors -> off-diagonal e^{-0.8}; teacher: equal
    # vectors -> off-diagonal e^{-0.8} * 2.12. Diagonals agree, two entries differ.
    fs = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    ft = torch.tensor([[3.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    diff = math.exp(-0.8) * (2.12 - 1.0)
    want = 2 * diff**2 / 4
    assert correlation_congruence_loss(fs, ft, 0.4, 2).item() == pytest.approx(want, rel=1e-12)
    assert correlation_congruence_loss(ft, ft).item() == 0.0


# ------------------------------------------------------------------------------ VID


def test_vid_nll_matches_formula_and_is_minimised_at_residual_variance() -> None:
    t, mu = rand(4, 3, 2, 2, seed=8), rand(4, 3, 2, 2, seed=9)
    var = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64).view(1, 3, 1, 1)
    tn, mn, vn = t.numpy(), mu.numpy(), var.numpy()
    want = np.mean(0.5 * np.log(vn) + (tn - mn) ** 2 / (2 * vn))
    assert vid_nll(t, mu, var).item() == pytest.approx(want, rel=1e-12)
    # For a shared variance the NLL is minimal at v = mean squared residual.
    r2 = ((t - mu) ** 2).mean().item()
    best = vid_nll(t, mu, torch.tensor(r2, dtype=torch.float64)).item()
    for scale in (0.8, 1.25):
        assert vid_nll(t, mu, torch.tensor(r2 * scale, dtype=torch.float64)).item() > best


# ------------------------------------------------------------------------------ RKD


def np_rkd(fs: np.ndarray, ft: np.ndarray) -> tuple[float, float]:
    b = fs.shape[0]

    def huber(x: float) -> float:
        return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5

    def psi_d(f: np.ndarray) -> np.ndarray:
        d = np.array([[np.linalg.norm(f[i] - f[j]) for j in range(b)] for i in range(b)])
        return d / (d.sum() / (b * (b - 1)))

    def psi_a(f: np.ndarray) -> np.ndarray:
        a = np.zeros((b, b, b))
        for j in range(b):
            for i in range(b):
                for k in range(b):
                    if i != j and k != j:
                        e1, e2 = f[i] - f[j], f[k] - f[j]
                        a[j, i, k] = e1 @ e2 / (np.linalg.norm(e1) * np.linalg.norm(e2))
        return a

    dist = np.mean([huber(x) for x in (psi_d(fs) - psi_d(ft)).ravel()])
    ang = np.mean([huber(x) for x in (psi_a(fs) - psi_a(ft)).ravel()])
    return float(dist), float(ang)


def test_rkd_matches_loops() -> None:
    fs, ft = rand(5, 3, seed=10) * 3, rand(5, 6, seed=11) * 0.2
    dist, ang = np_rkd(fs.numpy(), ft.numpy())
    assert rkd_distance_loss(fs, ft).item() == pytest.approx(dist, rel=1e-9)
    assert rkd_angle_loss(fs, ft).item() == pytest.approx(ang, rel=1e-9)
    assert rkd_loss(fs, ft, 25, 50).item() == pytest.approx(25 * dist + 50 * ang, rel=1e-9)
    assert rkd_loss(fs, ft, 0, 50).item() == pytest.approx(50 * ang, rel=1e-9)


def test_rkd_angle_hand_example() -> None:
    # Teacher: an equilateral triangle (every cos 1/2). Student: the right isosceles
    # triangle (cos 0 at the right angle, sqrt(2)/2 at the others). Six (j, i != k)
    # entries differ; Huber 0.5 x^2 summed = (7 - 4 sqrt 2) / 4, averaged over 27.
    ft = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]], dtype=torch.float64)
    fs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    want = (7 - 4 * math.sqrt(2)) / 4 / 27
    assert rkd_angle_loss(fs, ft).item() == pytest.approx(want, rel=1e-9)


def test_rkd_invariances() -> None:
    ft = rand(6, 4, seed=12)
    q, _ = torch.linalg.qr(rand(4, 4, seed=13))
    moved = ft @ q * 5.0 + 3.0  # rotation, scaling, translation keep every relation
    assert rkd_loss(moved, ft).item() == pytest.approx(0.0, abs=1e-10)
    assert rkd_distance_loss(rand(6, 4, seed=14), ft).item() > 1e-3


# ------------------------------------------------------------------------------ CRD


def test_crd_nce_matches_hand_formula() -> None:
    scores = torch.tensor([[2.0, 0.5, 0.1], [0.3, 1.5, 0.2]], dtype=torch.float64)
    m, n = 2, 10.0
    c = m / n
    want = 0.0
    for row in scores.tolist():
        want -= math.log(row[0] / (row[0] + c)) + sum(math.log(c / (x + c)) for x in row[1:])
    got = crd_nce_loss(scores, num_data=10, eps=0.0)
    assert got.item() == pytest.approx(want / 2, rel=1e-12)
    # A higher positive score and lower negative scores lower the loss.
    better = scores.clone()
    better[:, 0] *= 2
    better[:, 1:] /= 2
    assert crd_nce_loss(better, 10).item() < got.item()


def test_memory_draws_negatives_excluding_the_positive() -> None:
    torch.manual_seed(0)
    mem = ContrastMemory(dim=4, num_data=7, num_negatives=50)
    idx = torch.tensor([0, 3, 6])
    drawn = mem.draw(idx)
    assert drawn.shape == (3, 1 + 6)  # capped at num_data - 1
    assert torch.equal(drawn[:, 0], idx)
    assert not (drawn[:, 1:] == idx[:, None]).any()
    assert int(drawn.min()) >= 0 and int(drawn.max()) <= 6


def test_bank_dots_both_paths_agree() -> None:
    anchor, bank = rand(3, 5, seed=20), rand(40, 5, seed=21)
    idx = torch.randint(0, 40, (3, 4), generator=torch.Generator().manual_seed(0))
    want = torch.einsum("bd,bkd->bk", anchor, bank[idx])
    assert torch.allclose(bank_dots(anchor, bank, idx), want)  # 40 > 8 * 4: row gather
    small, idx2 = bank[:30], idx.clamp(max=29)
    want2 = torch.einsum("bd,bkd->bk", anchor, small[idx2])
    assert torch.allclose(bank_dots(anchor, small, idx2), want2)  # 30 <= 32: whole-bank product


def test_memory_other_class_negatives() -> None:
    torch.manual_seed(0)
    mem = ContrastMemory(dim=4, num_data=7, num_negatives=400)
    labels = torch.tensor([2, 0, 1, 0, 1, 1, 2])
    mem.set_labels(labels)
    drawn = mem.draw(torch.tensor([0, 1, 4]))
    assert drawn.shape == (3, 1 + 6)  # still capped at num_data - 1
    mem.num_negatives = 6
    many = torch.cat([mem.draw(torch.tensor([0, 1, 4]))[:, 1:] for _ in range(300)], dim=1)
    for row, idx in enumerate((0, 1, 4)):
        others = {i for i in range(7) if labels[i] != labels[idx]}
        assert set(many[row].tolist()) == others  # every other-class sample, nothing else
    # roughly uniform over them: 1800 draws over 4 or 5 candidates
    counts = torch.bincount(many[1], minlength=7).float()
    assert counts[[0, 2, 4, 5, 6]].min() > 1800 / 5 * 0.8
    with pytest.raises(DataError, match="labels"):
        mem.set_labels(torch.zeros(3, dtype=torch.long))


def test_memory_scores_update_and_state_dict() -> None:
    torch.manual_seed(0)
    mem = ContrastMemory(dim=3, num_data=5, num_negatives=4, temperature=0.5, momentum=0.25)
    es, et = F.normalize(torch.randn(2, 3), dim=1), F.normalize(torch.randn(2, 3), dim=1)
    idx = torch.tensor([1, 4])
    old_s, old_t = mem.memory_s.clone(), mem.memory_t.clone()
    out_s, out_t = mem.scores(es, et, idx)
    # positive column: exp(<teacher bank row, student anchor> / tau) / Z, Z = mean * N
    raw = torch.exp((old_t[idx] * es).sum(1) / 0.5)
    assert torch.allclose(out_s[:, 0] * mem.z_s, raw)
    assert mem.z_s.item() > 0 and mem.z_t.item() > 0
    want = F.normalize(old_s[idx] * 0.25 + es * 0.75, dim=1)
    assert torch.allclose(mem.memory_s[idx], want)
    assert torch.allclose(mem.memory_t[idx], F.normalize(old_t[idx] * 0.25 + et * 0.75, dim=1))
    untouched = torch.tensor([0, 2, 3])
    assert torch.equal(mem.memory_s[untouched], old_s[untouched])
    # Z is estimated once
    z = mem.z_s.clone()
    mem.scores(es, et, idx)
    assert torch.equal(mem.z_s, z)
    # eval mode reads without writing
    mem.eval()
    frozen = mem.memory_s.clone()
    mem.scores(es, et, idx)
    assert torch.equal(mem.memory_s, frozen)
    # a fresh, unsized memory adopts a checkpoint's banks
    other = ContrastMemory(dim=3)
    other.load_state_dict(mem.state_dict())
    assert torch.equal(other.memory_t, mem.memory_t) and other.num_data == 5
    with pytest.raises(DataError, match="indices"):
        mem.scores(es, et, torch.tensor([0, 5]))


# ------------------------------------------------------------------------------ DKD


def test_dkd_identity_kd_equals_tckd_plus_weighted_nckd() -> None:
    zs, zt = rand(6, 10, seed=15) * 3, rand(6, 10, seed=16) * 3
    y = torch.tensor([0, 3, 9, 3, 5, 1])
    tckd, nckd = dkd_parts(zs, zt, y, temperature=4.0)
    pt = F.softmax(zt / 4.0, dim=1).gather(1, y[:, None]).squeeze(1)
    for i in range(6):
        kd_i = kd_loss(zs[i : i + 1], zt[i : i + 1], 4.0)
        assert kd_i.item() == pytest.approx((tckd[i] + (1 - pt[i]) * nckd[i]).item(), rel=1e-10)
    assert dkd_loss(zs, zt, y, 1.0, 8.0, 4.0).item() == pytest.approx(
        (tckd + 8 * nckd).mean().item(), rel=1e-12
    )


def test_dkd_parts_match_numpy() -> None:
    zs, zt = rand(3, 5, seed=17), rand(3, 5, seed=18)
    y = [2, 0, 4]
    tckd, nckd = dkd_parts(zs, zt, torch.tensor(y), temperature=2.0)
    for i, c in enumerate(y):
        ps = np.exp(zs[i].numpy() / 2)
        pt = np.exp(zt[i].numpy() / 2)
        ps, pt = ps / ps.sum(), pt / pt.sum()
        bs, bt = np.array([ps[c], 1 - ps[c]]), np.array([pt[c], 1 - pt[c]])
        want_t = (bt * np.log(bt / bs)).sum() * 4
        qs, qt = np.delete(ps, c), np.delete(pt, c)
        qs, qt = qs / qs.sum(), qt / qt.sum()
        want_n = (qt * np.log(qt / qs)).sum() * 4
        assert tckd[i].item() == pytest.approx(want_t, rel=1e-9)
        assert nckd[i].item() == pytest.approx(want_n, rel=1e-9)
    assert torch.allclose(dkd_parts(zt, zt, torch.tensor(y))[0], torch.zeros(3, dtype=zt.dtype))


def test_dkd_warmup() -> None:
    assert warmup_factor(0, 20) == pytest.approx(1 / 20)
    assert warmup_factor(9, 20) == pytest.approx(0.5)
    assert warmup_factor(19, 20) == 1.0
    assert warmup_factor(200, 20) == 1.0
    assert warmup_factor(0, 0) == 1.0


# ------------------------------------------------------------------------------ terms

TAPS_FC = {"student": ["fc:input"], "teacher": ["fc:input"]}
SPECS = {
    "pkt": {"method": "pkt", **TAPS_FC},
    "sp": {"method": "sp", "student": ["stages.1"], "teacher": ["stages.2"]},
    "cc": {"method": "cc", **TAPS_FC},
    "cc_embed": {"method": "cc", "embed_dim": 16, **TAPS_FC},
    "vid": {
        "method": "vid",
        "student": ["stages.0", "stages.1"],
        "teacher": ["stages.0", "stages.2"],
    },
    "vid_vector": {"method": "vid", **TAPS_FC},
    "rkd": {"method": "rkd", **TAPS_FC},
    "crd": {"method": "crd", "num_negatives": 32, "embed_dim": 8, **TAPS_FC},
    "dkd": {"method": "dkd", "warmup_epochs": 0},
}


def make_distiller(spec: dict, seed: int = 0) -> tuple[Distiller, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    student = create_model("cnn_small", num_classes=10, in_channels=1)
    teacher = create_model("cnn_medium", num_classes=10, in_channels=1)
    x = torch.randn(8, 1, 8, 8)
    y = torch.arange(8) % 10
    term = build_term(spec)
    dist = Distiller(student, teacher, [term], example_input=x)
    if spec["method"] == "crd":
        term.bind_data(40)
    return dist, x, y


@pytest.mark.parametrize("key", sorted(SPECS))
def test_term_gradients_reach_student_and_heads_not_teacher(key: str) -> None:
    dist, x, y = make_distiller(SPECS[key])
    teacher = dist.teacher
    assert teacher is not None
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    out = dist(x, y, indices=torch.arange(8) * 5, epoch=3)
    loss = out.losses[dist.terms[next(iter(dist.terms))].term_name]
    assert torch.isfinite(loss) and loss.item() > 0
    out.total.backward()
    grads = [p.grad for p in dist.student.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    term = next(iter(dist.terms.values()))
    for name, p in term.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_term_defaults_and_weights() -> None:
    weights = {"pkt": 150, "sp": 5, "cc": 10, "vid": 1, "rkd": 0.1, "crd": 0.2, "dkd": 1}
    for method, w in weights.items():
        spec = {"method": method}
        if method in ("sp", "vid"):
            spec.update(student=["a"], teacher=["b"])
        assert build_term(spec).weight == w


def test_term_zero_when_student_equals_teacher() -> None:
    # The same network as student and teacher: every relation matches.
    torch.manual_seed(0)
    net = create_model("cnn_small", num_classes=10, in_channels=1).eval()
    twin = create_model("cnn_small", num_classes=10, in_channels=1).eval()
    twin.load_state_dict(net.state_dict())
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8)
    terms = [
        build_term({"method": "pkt"}),
        build_term({"method": "rkd"}),
        build_term({"method": "cc"}),
        build_term({"method": "sp", "student": ["stages.1"], "teacher": ["stages.1"]}),
        build_term({"method": "dkd", "warmup_epochs": 0}),
    ]
    dist = Distiller(net, twin, terms, example_input=x).eval()
    out = dist(x, y)
    for name, value in out.losses.items():
        assert value.item() == pytest.approx(0.0, abs=1e-6 * (8 * 150 if name == "pkt" else 1))


def test_dkd_term_warms_up() -> None:
    dist, x, y = make_distiller({"method": "dkd"})
    full = make_distiller({"method": "dkd", "warmup_epochs": 0})[0]
    a = dist(x, y, epoch=4).losses["dkd"]
    b = full(x, y, epoch=4).losses["dkd"]
    assert a.item() == pytest.approx(b.item() * 5 / 20, rel=1e-6)
    with pytest.raises(DataError, match="hard integer labels"):
        full(x, F.one_hot(y, 10).float())


def test_dkd_warmup_scales_with_the_stage_length() -> None:
    # a linear ramp over the first 1/12 of the stage's steps (mdistiller's 20 of 240
    # epochs); a recipe's warmup_epochs or no progress fall back to epoch counts
    dist, x, y = make_distiller({"method": "dkd"})
    full = make_distiller({"method": "dkd", "warmup_epochs": 0})[0]
    b = full(x, y).losses["dkd"].item()
    assert dist(x, y, progress=0.0).losses["dkd"].item() == 0.0
    assert dist(x, y, progress=1 / 24).losses["dkd"].item() == pytest.approx(b / 2)
    assert dist(x, y, progress=0.5).losses["dkd"].item() == pytest.approx(b)
    assert dist(x, y, epoch=4).losses["dkd"].item() == pytest.approx(b * 5 / 20)
    fixed = make_distiller({"method": "dkd", "warmup_epochs": 2})[0]
    assert fixed(x, y, epoch=0, progress=0.9).losses["dkd"].item() == pytest.approx(b / 2)


def test_engine_gives_terms_the_stage_progress(tmp_path, monkeypatch) -> None:
    # DKD's warm-up reads StepContext.progress: the share of the stage before the step
    from kdlab.config import load_config  # noqa: PLC0415
    from kdlab.engine import train  # noqa: PLC0415 - the engine pulls in ignite
    from kdlab.methods.dkd import DecoupledKD  # noqa: PLC0415

    seen: list[float | None] = []
    forward = DecoupledKD.forward

    def spy(self, ctx):  # noqa: ANN001, ANN202
        seen.append(ctx.progress)
        return forward(self, ctx)

    monkeypatch.setattr(DecoupledKD, "forward", spy)
    cfg = {
        "name": "progress",
        "output_dir": str(tmp_path),
        "student": {"name": "cnn_tiny"},
        "teacher": {"name": "cnn_tiny"},
        "data": {"per_class": 8, "batch_size": 40},
        "distill": {"terms": [{"method": "ce"}, {"method": "dkd"}]},
        "train": {"epochs": 2, "progress": False},
    }
    train(load_config(cfg))
    steps = len(seen)
    assert steps >= 4 and seen == pytest.approx([i / steps for i in range(steps)])


def test_crd_needs_data_and_indices() -> None:
    torch.manual_seed(0)
    student = create_model("cnn_small", num_classes=10, in_channels=1)
    teacher = create_model("cnn_medium", num_classes=10, in_channels=1)
    x, y = torch.randn(4, 1, 8, 8), torch.arange(4)
    term = build_term({"method": "crd"})
    dist = Distiller(student, teacher, [term], example_input=x)
    with pytest.raises(ConfigError, match="num_data"):
        dist(x, y, indices=torch.arange(4))
    term.bind_data(100)
    assert term.memory.num_data == 100 and term.memory.memory_s.shape == (100, 128)
    with pytest.raises(DataError, match="indices"):
        dist(x, y)
    out = dist(x, y, indices=torch.arange(4))
    assert torch.isfinite(out.total)
    # num_negatives capped at 99: a positive and 99 negatives per sample
    assert term.memory.draw(torch.arange(4)).shape == (4, 100)
    # the banks are saved with the Distiller's state
    assert any(k.endswith("memory.memory_t") for k in dist.state_dict())


def test_crd_bound_before_setup_as_the_engine_does() -> None:
    torch.manual_seed(0)
    student = create_model("cnn_small", num_classes=10, in_channels=1)
    teacher = create_model("cnn_medium", num_classes=10, in_channels=1)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    term = build_term({"method": "crd", "negatives": "other_class", "embed_dim": 8})
    term.bind_data(10, labels=torch.tensor([0, 1] * 5))
    dist = Distiller(student, teacher, [term], example_input=x)
    assert term.memory.num_data == 10
    out = dist(x, y, indices=torch.tensor([0, 1, 2, 3]))
    assert torch.isfinite(out.total)
    drawn = term.memory.draw(torch.tensor([0, 1]))
    assert (drawn[0, 1:] % 2 == 1).all() and (drawn[1, 1:] % 2 == 0).all()
    term.bind_data(10)  # labels dropped: other_class can no longer draw
    with pytest.raises(ConfigError, match="other_class"):
        dist(x, y, indices=torch.tensor([0, 1, 2, 3]))


def test_crd_uniform_negatives_ignore_the_labels_the_engine_binds() -> None:
    # The engine always passes the training labels; 'uniform' (the default) must still
    # draw same-class negatives, before and after setup.
    torch.manual_seed(0)
    student = create_model("cnn_small", num_classes=10, in_channels=1)
    teacher = create_model("cnn_medium", num_classes=10, in_channels=1)
    x = torch.randn(4, 1, 8, 8)
    labels = torch.tensor([0, 1] * 5)
    term = build_term({"method": "crd", "embed_dim": 8, "num_negatives": 9})
    term.bind_data(10, labels=labels)
    Distiller(student, teacher, [term], example_input=x)
    term.bind_data(10, labels=labels)
    assert term.memory._class_order is None
    drawn = torch.cat([term.memory.draw(torch.tensor([0]))[:, 1:] for _ in range(50)], dim=1)
    assert set(drawn.flatten().tolist()) == set(range(1, 10))  # same class (even) included


def test_bad_taps_are_clear_errors() -> None:
    with pytest.raises(TapError, match="1 student taps but 2 teacher taps"):
        make_distiller({"method": "sp", "student": ["pool"], "teacher": ["stages.1", "stages.2"]})
    with pytest.raises(ConfigError, match="crd"):
        build_term({"method": "crd", "student": ["stages.0", "fc:input"]})
