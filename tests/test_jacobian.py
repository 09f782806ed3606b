"""Jacobian matching: gradients, the loss against hand values, the term in the Distiller."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdlab.config import load_config
from kdlab.distiller import Distiller
from kdlab.functional.jacobian import (
    jacobian_matching_loss,
    output_input_gradients,
    select_classes,
)
from kdlab.methods import build_terms
from kdlab.models import create_model
from kdlab.views import build_views

ROOT = Path(__file__).resolve().parents[1]


def _mlp(d: int, c: int, act: type[nn.Module] = nn.Tanh, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 12), act(), nn.Linear(12, c)).double()


def test_gradients_of_affine_map_are_weight_rows() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(6, 4).double()
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    classes = torch.tensor([[0, 3], [1, 1], [2, 0], [3, 2], [0, 0]])
    g = output_input_gradients(lin(x), x, classes, create_graph=False)
    assert g.shape == (5, 2, 6)
    expected = lin.weight.detach()[classes]  # (5, 2, 6)
    torch.testing.assert_close(g, expected)
    assert not g.requires_grad


def test_gradients_match_per_sample_jacobian() -> None:
    net = _mlp(6, 4)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    classes = torch.tensor([[1], [3], [0]])
    g = output_input_gradients(net(x), x, classes, create_graph=True)
    assert g.requires_grad
    for n in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: net(v[None])[0], x[n].detach())
        torch.testing.assert_close(g[n, 0], jac[classes[n, 0]])


def test_loss_against_numpy() -> None:
    rng = np.random.default_rng(1)
    s = rng.normal(size=(4, 2, 7))
    t = rng.normal(size=(4, 2, 7))
    sn = s / np.linalg.norm(s, axis=-1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=-1, keepdims=True)
    expected = ((tn - sn) ** 2).sum(axis=(1, 2)).mean()
    got = jacobian_matching_loss(torch.from_numpy(s), torch.from_numpy(t))
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_loss_is_scale_invariant_and_bounded() -> None:
    g = torch.randn(5, 1, 9, dtype=torch.float64)
    assert jacobian_matching_loss(g, 7.5 * g).item() == pytest.approx(0.0, abs=1e-12)
    assert jacobian_matching_loss(g, -0.1 * g).item() == pytest.approx(4.0, rel=1e-12)
    # orthogonal unit directions: ||e1 - e2||^2 = 2
    a = torch.zeros(1, 1, 3, dtype=torch.float64)
    b = torch.zeros(1, 1, 3, dtype=torch.float64)
    a[..., 0], b[..., 1] = 2.0, 5.0
    assert jacobian_matching_loss(a, b).item() == pytest.approx(2.0)
    # a dead (zero) gradient is the zero vector: distance 1 to any unit vector
    assert jacobian_matching_loss(torch.zeros_like(a), b).item() == pytest.approx(1.0)


def test_select_classes() -> None:
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
    y = torch.tensor([2, 0])
    assert select_classes("teacher_top1", logits).tolist() == [[1], [0]]
    assert select_classes("label", logits, y).tolist() == [[2], [0]]
    assert select_classes("all", logits).tolist() == [[0, 1, 2], [0, 1, 2]]
    r = select_classes("random", logits, k=2, generator=torch.Generator().manual_seed(0))
    assert r.shape == (2, 2) and all(len(set(row)) == 2 for row in r.tolist())
    with pytest.raises(ValueError, match="k <= 3"):
        select_classes("random", logits, k=4)


def _distiller(student: nn.Module, teacher: nn.Module, **params: object) -> Distiller:
    terms = build_terms([{"method": "jacobian", **params}])
    return Distiller(student, teacher, terms)


@pytest.mark.parametrize("classes", ["teacher_top1", "label", "all"])
def test_term_matches_independent_computation(classes: str) -> None:
    student, teacher = _mlp(8, 3, seed=1), _mlp(8, 3, seed=2)
    x = torch.randn(6, 1, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    out = _distiller(student, teacher, classes=classes)(x, y)

    # independent: full per-sample Jacobians by torch.func, then pick rows
    def jac(model: nn.Module) -> torch.Tensor:
        f = lambda v: model(v[None])[0]  # noqa: E731
        return torch.stack([torch.func.jacrev(f)(xi).reshape(3, -1) for xi in x])

    js, jt = jac(student).detach(), jac(teacher)
    if classes == "teacher_top1":
        idx = teacher(x).argmax(1, keepdim=True)
    elif classes == "label":
        idx = y[:, None]
    else:
        idx = torch.arange(3).expand(6, 3)
    rows = lambda j: torch.stack([j[n, idx[n]] for n in range(6)])  # noqa: E731
    s, t = rows(js), rows(jt)
    s = s / s.norm(dim=-1, keepdim=True)
    t = t / t.norm(dim=-1, keepdim=True)
    expected = (t - s).pow(2).sum(dim=(1, 2)).mean()
    assert out.losses["jacobian"].item() == pytest.approx(expected.item(), rel=1e-10)


def test_term_trains_student_only_and_is_zero_for_a_copy() -> None:
    teacher = _mlp(8, 3, seed=2)
    student = _mlp(8, 3, seed=1)
    x = torch.randn(6, 1, 8, dtype=torch.float64)
    y = torch.zeros(6, dtype=torch.long)
    out = _distiller(student, teacher, weight=2.0)(x, y)
    out.total.backward()
    weights = [p for p in student.parameters() if p.dim() > 1]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)
    # the output bias does not change input-gradients, so it gets no gradient
    last_bias = student[-1].bias.grad
    assert last_bias is None or last_bias.abs().max() == 0
    assert all(p.grad is None for p in teacher.parameters())
    same = _distiller(copy.deepcopy(teacher), teacher)(x, y)
    assert same.losses["jacobian"].item() == pytest.approx(0.0, abs=1e-12)


def test_double_backward_gradient_is_correct() -> None:
    """d loss / d student-weights through create_graph=True, against finite differences."""
    teacher = _mlp(5, 3, seed=3)
    student = _mlp(5, 3, seed=4)
    x = torch.randn(4, 1, 5, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    dist = _distiller(student, teacher)
    w = student[1].weight

    def loss_of(weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            w.copy_(weight)
        return dist(x, y).total

    w0 = w.detach().clone()
    loss_of(w0).backward()
    analytic = w.grad.detach().clone()
    numeric = torch.zeros_like(w0)
    h = 1e-6
    for i in range(w0.shape[0]):
        for j in range(w0.shape[1]):
            e = torch.zeros_like(w0)
            e[i, j] = h
            numeric[i, j] = (loss_of(w0 + e).item() - loss_of(w0 - e).item()) / (2 * h)
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_probs_output_option_changes_the_loss() -> None:
    student, teacher = _mlp(8, 3, seed=1), _mlp(8, 3, seed=2)
    x = torch.randn(6, 1, 8, dtype=torch.float64)
    y = torch.zeros(6, dtype=torch.long)
    a = _distiller(student, teacher)(x, y).losses["jacobian"].item()
    b = _distiller(student, teacher, output="probs", T=2.0)(x, y).losses["jacobian"].item()
    assert 0.0 < a <= 4.0 and 0.0 < b <= 4.0 and abs(a - b) > 1e-6


def test_recipes_build_and_noisy_views_share_the_noise() -> None:
    jac = load_config(ROOT / "configs/digits/jacobian.yaml")
    assert [t["method"] for t in jac.distill.terms] == ["ce", "kd", "jacobian"]
    noisy = load_config(ROOT / "configs/digits/noisy_kd.yaml")
    views = build_views(noisy.distill.views)
    terms = build_terms(noisy.distill.terms)
    torch.manual_seed(0)
    teacher = create_model("cnn_small", 10, 1).eval()
    student = copy.deepcopy(teacher)
    x = torch.randn(8, 1, 8, 8)
    y = torch.arange(8)
    dist = Distiller(student, teacher, terms, views=views, example_input=x).eval()
    # identical models on the very same noisy tensor: KD loss is exactly zero
    assert dist(x, y).losses["kd"].item() == pytest.approx(0.0, abs=1e-10)
    # the teacher on the clean input while the student sees noise: no longer matched
    terms[1].params.teacher_view = "default"
    assert dist(x, y).losses["kd"].item() > 1e-8


def test_cnn_pair_on_digit_shapes_runs_and_backpropagates() -> None:
    torch.manual_seed(0)
    teacher = create_model("cnn_medium", 10, 1)
    student = create_model("cnn_small", 10, 1)
    terms = build_terms(
        [{"method": "ce", "weight": 0.1}, {"method": "kd", "weight": 0.9}, {"method": "jacobian"}]
    )
    x = torch.randn(4, 1, 8, 8)
    dist = Distiller(student, teacher, terms, example_input=x)
    out = dist(x, torch.tensor([0, 1, 2, 3]))
    assert set(out.losses) == {"ce", "kd", "jacobian"}
    out.total.backward()
    assert student.stages[0].conv.weight.grad.abs().sum() > 0


def test_term_under_no_grad_raises_a_clear_error() -> None:
    student, teacher = _mlp(8, 3, seed=1), _mlp(8, 3, seed=2)
    dist = _distiller(student, teacher)
    x = torch.randn(2, 1, 8, dtype=torch.float64)
    with torch.no_grad(), pytest.raises(RuntimeError, match="gradients enabled"):
        dist(x, torch.zeros(2, dtype=torch.long))
