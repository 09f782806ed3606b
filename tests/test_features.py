"""Feature-map methods: FitNets, AT, NST, AB, FT, FSP.

Each functional loss is checked against an independent NumPy computation (or a tiny
example worked by hand), for the invariances its method implies, and each term inside a
real Distiller (cnn_medium -> cnn_small on 1x8x8 inputs) for where gradients go and
whether its pre-stages are well-formed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdlab.config import load_config
from kdlab.distiller import Distiller
from kdlab.errors import ConfigError, TapError
from kdlab.functional.features import (
    activation_boundary_loss,
    attention_map,
    attention_transfer,
    factor_transfer,
    fsp_loss,
    fsp_matrix,
    hint_loss,
    nst_mmd2,
    reconstruction_loss,
)
from kdlab.methods import build_terms
from kdlab.models import create_model

ROOT = Path(__file__).resolve().parents[1]
FEATURE_METHODS = ["fitnet", "at", "nst", "ab", "ft", "fsp"]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ functional: FitNets


def test_hint_loss_matches_numpy_in_both_reductions() -> None:
    g = _gen()
    a, b = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    d = _np(a) - _np(b)
    paper = np.mean([0.5 * np.sum(d[n] ** 2) for n in range(3)])
    assert hint_loss(a, b, "paper").item() == pytest.approx(paper, rel=1e-6)
    assert hint_loss(a, b, "mean").item() == pytest.approx(np.mean(d**2), rel=1e-6)
    # the documented relation: paper = mean * C*H*W / 2
    assert paper == pytest.approx(np.mean(d**2) * 100 / 2, rel=1e-9)
    assert hint_loss(a, a).item() == 0.0
    with pytest.raises(TapError):
        hint_loss(a, b[:, :2])


# ------------------------------------------------------------------ functional: AT


def _np_at(fs: np.ndarray, ft: np.ndarray, squared: bool, p: float = 2.0) -> float:
    out = []
    for n in range(fs.shape[0]):
        qs = (np.abs(fs[n]) ** p).sum(0).ravel()
        qt = (np.abs(ft[n]) ** p).sum(0).ravel()
        d = qs / np.linalg.norm(qs) - qt / np.linalg.norm(qt)
        out.append(np.sum(d**2) if squared else np.linalg.norm(d))
    return float(np.mean(out) / fs[0, 0].size)


def test_attention_transfer_matches_numpy_and_ignores_channel_counts() -> None:
    g = _gen(1)
    fs, ft = torch.randn(4, 3, 5, 6, generator=g), torch.randn(4, 7, 5, 6, generator=g)
    for squared in (True, False):
        got = attention_transfer(fs, ft, squared=squared).item()
        assert got == pytest.approx(_np_at(_np(fs), _np(ft), squared), rel=1e-5)


def test_attention_by_hand() -> None:
    # one channel, two positions: Q_s = (9, 0) -> (1, 0); Q_t = (1, 1) -> (1, 1)/sqrt 2
    fs = torch.tensor([[[[3.0, 0.0]]]])
    ft = torch.tensor([[[[1.0, -1.0]]]])
    assert torch.equal(attention_map(fs), torch.tensor([[[9.0, 0.0]]]))
    d2 = (1 - 2**-0.5) ** 2 + 0.5  # ||(1 - 1/sqrt2, -1/sqrt2)||^2 = 2 - sqrt 2
    assert attention_transfer(fs, ft).item() == pytest.approx(d2 / 2, rel=1e-6)
    assert attention_transfer(fs, ft, squared=False).item() == pytest.approx(d2**0.5 / 2)


def test_attention_is_zero_for_equal_maps_and_invariant_to_scale() -> None:
    g = _gen(2)
    fs, ft = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 5, 3, 3, generator=g)
    assert attention_transfer(fs, fs).item() == pytest.approx(0.0, abs=1e-12)
    base = attention_transfer(fs, ft).item()
    assert attention_transfer(7.0 * fs, ft).item() == pytest.approx(base, rel=1e-5)
    assert attention_transfer(-fs, ft).item() == pytest.approx(base, rel=1e-5)
    with pytest.raises(TapError, match="pool one"):
        attention_transfer(fs, torch.randn(2, 5, 2, 2))


# ------------------------------------------------------------------ functional: NST


def _np_kernel(x: np.ndarray, y: np.ndarray, kernel: str, d: int, c: float, s2: float) -> float:
    if kernel == "linear":
        return float(x @ y)
    if kernel == "poly":
        return float((x @ y + c) ** d)
    return float(np.exp(-np.sum((x - y) ** 2) / (2 * s2)))


def _np_mmd2(fs: np.ndarray, ft: np.ndarray, kernel: str, d=2, c=0.0, s2=1.0) -> float:
    total = 0.0
    for n in range(fs.shape[0]):
        s = [v / np.linalg.norm(v) for v in fs[n].reshape(fs.shape[1], -1)]
        t = [v / np.linalg.norm(v) for v in ft[n].reshape(ft.shape[1], -1)]
        k = lambda a, b: _np_kernel(a, b, kernel, d, c, s2)  # noqa: E731
        tt = np.mean([k(a, b) for a in t for b in t])
        ss = np.mean([k(a, b) for a in s for b in s])
        ts = np.mean([k(a, b) for a in t for b in s])
        total += tt + ss - 2 * ts
    return total / fs.shape[0]


@pytest.mark.parametrize(
    ("kernel", "kw"),
    [
        ("linear", {}),
        ("poly", {}),
        ("poly", {"degree": 3, "c": 0.5}),
        ("gaussian", {"sigma2": 0.7}),
    ],
)
def test_nst_mmd2_matches_numpy(kernel: str, kw: dict) -> None:
    g = _gen(3)
    fs, ft = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    got = nst_mmd2(fs, ft, kernel=kernel, **kw).item()  # type: ignore[arg-type]
    ref = _np_mmd2(
        _np(fs), _np(ft), kernel, kw.get("degree", 2), kw.get("c", 0.0), kw.get("sigma2", 1.0)
    )
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-7)


def test_nst_by_hand_linear_kernel() -> None:
    # linear MMD^2 = ||mean_i t_i - mean_j s_j||^2. Teacher channels e1, e2 -> mean (.5, .5);
    # student channel (3, 0) normalises to e1 -> MMD^2 = .25 + .25 = .5
    ft = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])
    fs = torch.tensor([[[[3.0, 0.0]]]])
    assert nst_mmd2(fs, ft, kernel="linear").item() == pytest.approx(0.5)


def test_nst_is_zero_for_equal_maps_and_invariant_to_channel_scale() -> None:
    g = _gen(4)
    f = torch.randn(2, 4, 3, 3, generator=g)
    scale = torch.tensor([1.0, 3.0, 0.5, 10.0]).view(1, 4, 1, 1)
    ft = torch.randn(2, 6, 3, 3, generator=g)
    for kernel in ("linear", "poly", "gaussian"):
        assert nst_mmd2(f, f, kernel=kernel).item() == pytest.approx(0.0, abs=1e-6)
        a = nst_mmd2(f, ft, kernel=kernel).item()
        assert nst_mmd2(f * scale, ft, kernel=kernel).item() == pytest.approx(a, rel=1e-5)
    with pytest.raises(TapError, match="spatial"):
        nst_mmd2(f, torch.randn(2, 4, 2, 2))


# ------------------------------------------------------------------ functional: AB


def test_activation_boundary_loss_by_hand() -> None:
    # teacher fires at 0 and 2; margin 1:
    #   fire:  relu(1 - 0.5)^2 = 0.25,  relu(1 - 1.5)^2 = 0
    #   off:   relu(1 + -2)^2 = 0,      relu(1 + 0.2)^2 = 1.44
    t = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    s = torch.tensor([[0.5, -2.0, 1.5, 0.2]])
    assert activation_boundary_loss(s, t, margin=1.0).item() == pytest.approx(1.69)
    # margin 0: only the wrong side counts (0.2 on an off neuron)
    assert activation_boundary_loss(s, t, margin=0.0).item() == pytest.approx(0.04)
    # the teacher at exactly 0 does not fire
    assert activation_boundary_loss(torch.tensor([[0.5]]), torch.tensor([[0.0]])).item() == 2.25


def test_activation_boundary_loss_matches_numpy_and_is_zero_beyond_the_margin() -> None:
    g = _gen(5)
    s, t = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    sn, tn = _np(s), _np(t)
    h = np.where(tn > 0, np.maximum(1.5 - sn, 0), np.maximum(1.5 + sn, 0))
    ref = np.mean([np.sum(h[n] ** 2) for n in range(3)])
    assert activation_boundary_loss(s, t, margin=1.5).item() == pytest.approx(ref, rel=1e-6)
    beyond = 2.0 * torch.where(t > 0, 1.0, -1.0)  # |s| = 2 > margin on the right side
    assert activation_boundary_loss(beyond, t, margin=1.0).item() == 0.0


# ------------------------------------------------------------------ functional: FT


def test_factor_transfer_matches_numpy_and_is_scale_invariant() -> None:
    g = _gen(6)
    fs, ft = torch.randn(3, 2, 3, 3, generator=g), torch.randn(3, 2, 3, 3, generator=g)
    a = _np(fs).reshape(3, -1)
    b = _np(ft).reshape(3, -1)
    d = b / np.linalg.norm(b, axis=1, keepdims=True) - a / np.linalg.norm(a, axis=1, keepdims=True)
    assert factor_transfer(fs, ft).item() == pytest.approx(np.mean(np.abs(d)), rel=1e-6)
    paper = np.mean(np.abs(d).sum(1))
    assert factor_transfer(fs, ft, reduction="paper").item() == pytest.approx(paper, rel=1e-6)
    p2 = np.mean(np.sqrt((d**2).sum(1)))
    assert factor_transfer(fs, ft, p=2, reduction="paper").item() == pytest.approx(p2, rel=1e-6)
    assert factor_transfer(5 * fs, ft).item() == pytest.approx(factor_transfer(fs, ft).item())
    assert factor_transfer(ft, ft).item() == 0.0


def test_reconstruction_loss_is_the_mean_squared_error() -> None:
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[1.0, 0.0], [3.0, 5.0]])
    assert reconstruction_loss(a, b).item() == pytest.approx((4 + 1) / 4)


# ------------------------------------------------------------------ functional: FSP


def test_fsp_matrix_matches_numpy_and_pools_the_larger_map() -> None:
    g = _gen(7)
    f1, f2 = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    ref = np.einsum("nihw,njhw->nij", _np(f1), _np(f2)) / 16
    np.testing.assert_allclose(_np(fsp_matrix(f1, f2)), ref, rtol=1e-5, atol=1e-6)
    f3 = torch.randn(2, 5, 2, 2, generator=g)
    pooled = _np(f1).reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5))  # 2x2 average pooling
    ref = np.einsum("nihw,njhw->nij", pooled, _np(f3)) / 4
    np.testing.assert_allclose(_np(fsp_matrix(f1, f3)), ref, rtol=1e-5, atol=1e-6)


def test_fsp_by_hand_and_loss_reductions() -> None:
    f1 = torch.tensor([[[[1.0, 2.0]]]])  # 1 channel, 1x2
    f2 = torch.tensor([[[[3.0, 4.0]]], [[[0.0, 1.0]]]]).transpose(0, 1)  # 2 channels
    assert torch.allclose(fsp_matrix(f1, f2), torch.tensor([[[5.5, 1.0]]]))  # (3+8)/2, 2/2
    gs, gt = torch.zeros(1, 1, 2), torch.tensor([[[1.0, 3.0]]])
    assert fsp_loss(gs, gt, "paper").item() == 10.0
    assert fsp_loss(gs, gt, "mean").item() == 5.0
    assert fsp_loss(gt, gt).item() == 0.0


# ------------------------------------------------------------------ terms in a Distiller

TERM_SPECS = {
    "fitnet": {"method": "fitnet", "student": ["stages.0"], "teacher": ["stages.1"]},
    "at": {
        "method": "at",
        "student": ["stages.0", "stages.1"],
        "teacher": ["stages.0", "stages.1"],
    },
    "nst": {"method": "nst", "student": ["stages.1"], "teacher": ["stages.2"]},
    "ab": {
        "method": "ab",
        "student": ["stages.0.relu:input", "stages.1.relu:input"],
        "teacher": ["stages.0.relu:input", "stages.1.relu:input"],
    },
    "ft": {"method": "ft", "student": ["stages.1"], "teacher": ["stages.2"]},
    "fsp": {
        "method": "fsp",
        "student": ["stages.0", "stages.1"],
        "teacher": ["stages.0", "stages.1"],
        "adapter": True,
    },
}
ADAPTERS = {"fitnet": "regressors", "ab": "connectors", "ft": "translator", "fsp": "adapters"}


def _distiller(*specs: dict, seed: int = 0) -> tuple[Distiller, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    teacher = create_model("cnn_medium", 10, 1)
    student = create_model("cnn_small", 10, 1)
    x = torch.randn(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    d = Distiller(student, teacher, build_terms([{"method": "ce"}, *specs]), example_input=x)
    d.train()
    return d, x, y


def _main_or_prestage_loss(d: Distiller, name: str) -> dict[str, float] | None:
    term = d.terms[name]
    if term.in_main_stage:
        return None
    return dict(term.pre_stages()[0].losses)


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_gradients_reach_student_and_adapters_never_the_teacher(method: str) -> None:
    d, x, y = _distiller(TERM_SPECS[method])
    losses = _main_or_prestage_loss(d, method) or {method: 1.0}
    out = d(x, y, losses=losses)
    assert torch.isfinite(out.total) and out.total.item() > 0
    out.total.backward()
    assert d.teacher is not None
    for p in d.teacher.parameters():
        assert not p.requires_grad and p.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.student.parameters())
    adapter = getattr(d.terms[method], ADAPTERS.get(method, ""), None)
    if adapter is not None:
        grads = [p.grad for p in adapter.parameters()]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def _features(d: Distiller, x: torch.Tensor) -> tuple[dict, dict]:
    """Tapped features of one more forward of each model (student in train mode)."""
    assert d.teacher_taps is not None and d.teacher is not None
    with torch.no_grad():
        d.student(x)
        d.teacher(x)
    sf = {str(k): v.clone() for k, v in d.student_taps.features.items()}
    tf = {str(k): v.clone() for k, v in d.teacher_taps.features.items()}
    return sf, tf


def test_at_and_nst_terms_are_half_the_summed_functional_values() -> None:
    d, x, y = _distiller(TERM_SPECS["at"], TERM_SPECS["nst"])
    out = d(x, y, losses={"at": 1.0, "nst": 1.0})
    sf, tf = _features(d, x)
    at = 0.5 * sum(attention_transfer(sf[k], tf[k]) for k in ("stages.0", "stages.1"))
    # by default not divided by each map's H*W (8x8 and 4x4 here); per_position: the paper
    sizes = {"stages.0": 64, "stages.1": 16}
    raw = 0.5 * sum(attention_transfer(sf[k], tf[k]) * n for k, n in sizes.items())
    assert out.losses["at"].item() == pytest.approx(raw.item(), rel=1e-5)
    paper = _distiller({**TERM_SPECS["at"], "per_position": True})[0]
    paper.load_state_dict(d.state_dict(), strict=False)
    got = paper(x, y, losses={"at": 1.0}).losses["at"].item()
    assert got == pytest.approx(at.item(), rel=1e-5)
    # NST average-pools the student's 4x4 map to the teacher's 2x2 before the MMD
    pooled = torch.nn.functional.adaptive_avg_pool2d(sf["stages.1"], 2)
    nst = 0.5 * nst_mmd2(pooled, tf["stages.2"])
    assert out.losses["nst"].item() == pytest.approx(nst.item(), rel=1e-5)


def test_at_pools_the_larger_attention_map_across_resolutions() -> None:
    spec = {"method": "at", "student": ["stages.1"], "teacher": ["stages.0"]}  # 4x4 vs 8x8
    d, x, y = _distiller(spec)
    out = d(x, y, losses={"at": 1.0})
    sf, tf = _features(d, x)
    qt = attention_map(tf["stages.0"]).view(4, 4, 2, 4, 2).mean(dim=(2, 4))  # 2x2 blocks
    qs = attention_map(sf["stages.1"])
    qs, qt = (torch.nn.functional.normalize(q.flatten(1), dim=1) for q in (qs, qt))
    ref = 0.5 * (qs - qt).pow(2).sum(1).mean()  # not divided by the pooled 4x4 (default)
    assert out.losses["at"].item() == pytest.approx(ref.item(), rel=1e-5)


def test_fitnet_hint_stage_trains_only_up_to_the_guided_layer() -> None:
    d, x, y = _distiller(TERM_SPECS["fitnet"])
    (stage,) = d.terms["fitnet"].pre_stages()
    assert stage.name == "hint" and stage.train == ["student", "terms.fitnet"]
    d(x, y, losses=stage.losses).total.backward()
    grads = {n: p.grad for n, p in d.student.named_parameters()}
    assert all(grads[n] is not None for n in grads if n.startswith("stages.0."))
    assert all(grads[n] is None for n in grads if not n.startswith("stages.0."))
    # the paper's valid-conv regressor: 8x8 guided -> 4x4 hint is a 5x5 kernel
    assert d.terms["fitnet"].regressors[0].body[0].kernel_size == (5, 5)


def test_fitnet_main_stage_switch_and_default_weight() -> None:
    d, _x, _y = _distiller(TERM_SPECS["fitnet"])
    assert "fitnet" not in [t.term_name for t, _m, _w in d.loss_plan()]
    keep = {**TERM_SPECS["fitnet"], "main_stage": True, "hint_epochs": 0}
    d, _x, _y = _distiller(keep)
    assert ("fitnet", 100.0) in [(t.term_name, w) for t, _m, w in d.loss_plan()]
    assert d.terms["fitnet"].pre_stages() == []


def test_ft_stages_train_the_paraphraser_then_the_translator_only() -> None:
    # the paraphraser has no BN by default (the authors', RepDistiller's); with BN it runs
    # frozen in eval mode in the main stage
    plain = _distiller(TERM_SPECS["ft"])[0].terms["ft"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.paraphraser.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.translator.modules())
    (stage,) = plain.pre_stages()
    assert stage.optimizer is None  # the main optimiser's lr unless paraphraser_lr is set
    d, x, y = _distiller({**TERM_SPECS["ft"], "paraphraser_bn": True, "paraphraser_lr": 0.01})
    ft = d.terms["ft"]
    (stage,) = ft.pre_stages()
    assert stage.losses == {"ft.reconstruction": 1.0}
    assert stage.train == ["terms.ft.paraphraser"] and stage.optimizer is not None
    assert stage.optimizer.lr == 0.01
    d(x, y, losses=stage.losses).total.backward()
    assert all(p.grad is not None for p in ft.paraphraser.parameters())
    assert all(p.grad is None for p in ft.translator.parameters())
    assert all(p.grad is None for p in d.student.parameters())
    d.zero_grad(set_to_none=True)
    bn = next(m for m in ft.paraphraser.modules() if isinstance(m, nn.BatchNorm2d))
    stats = bn.running_mean.clone()
    d(x, y, losses={"ft": 1.0}).total.backward()
    assert torch.equal(bn.running_mean, stats)  # the frozen paraphraser runs in eval mode
    assert ft.paraphraser.training  # ... and is put back
    assert all(p.grad is None for p in ft.paraphraser.parameters())
    assert all(p.grad is not None for p in ft.translator.parameters())
    assert ft.frozen_in_main == ("paraphraser",)


def test_audit_defaults_of_the_pre_stage_methods() -> None:
    # FSP's initialisation is RepDistiller's plain sum (its beta 50 never applies); FT's
    # weight is the authors' beta 500 in the size-free form; AB's scale is the mean form
    fsp = _distiller(TERM_SPECS["fsp"])[0].terms["fsp"]
    assert fsp.weight == 1.0 and fsp.pre_stages()[0].losses == {"fsp": 1.0}
    ft = _distiller(TERM_SPECS["ft"])[0].terms["ft"]
    assert ft.weight == 11.0 and ft.params.reduction == "sqrt"
    ab = _distiller(TERM_SPECS["ab"])[0].terms["ab"]
    assert ab.params.reduction == "mean" and ab.weight == 0.3


def test_ft_reconstruction_is_zero_only_for_a_perfect_paraphraser() -> None:
    d, x, y = _distiller(TERM_SPECS["ft"])
    sf, tf = _features(d, x)
    out = d(x, y, losses={"ft.reconstruction": 1.0})
    para = d.terms["ft"].paraphraser
    ref = reconstruction_loss(para(tf["stages.2"]), tf["stages.2"])
    assert out.losses["ft.reconstruction"].item() == pytest.approx(ref.item(), rel=1e-5)


def test_fsp_without_adapter_names_the_mismatched_layers() -> None:
    spec = {**TERM_SPECS["fsp"], "adapter": False}
    with pytest.raises(TapError, match=r"'stages\.0' has 16 channels.*'stages\.0' has 32"):
        _distiller(spec)


def test_fsp_of_equal_widths_needs_no_adapter_and_matches_the_functional() -> None:
    torch.manual_seed(0)
    teacher, student = create_model("cnn_small", 10, 1), create_model("cnn_small", 10, 1)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    taps = ["stages.0:input", "stages.0", "stages.1"]  # 1x8x8 -> 16x8x8 -> 32x4x4
    spec = {"method": "fsp", "student": taps, "teacher": taps}
    d = Distiller(student, teacher, build_terms([spec]), example_input=x).train()
    assert all(isinstance(a, nn.Identity) for a in d.terms["fsp"].adapters)
    out = d(x, y, losses={"fsp": 1.0})
    sf, tf = _features(d, x)
    ref = sum(
        fsp_loss(fsp_matrix(sf[a], sf[b]), fsp_matrix(tf[a], tf[b]), "mean")
        for a, b in zip(taps, taps[1:])
    )
    assert out.losses["fsp"].item() == pytest.approx(ref.item(), rel=1e-5)
    assert out.losses["fsp"].item() > 0


def test_fsp_term_value() -> None:
    d, x, y = _distiller(TERM_SPECS["fsp"])
    term = d.terms["fsp"]
    out = d(x, y, losses={"fsp": 1.0})
    sf, tf = _features(d, x)
    a0, a1 = term.adapters
    with torch.no_grad():
        gs = fsp_matrix(a0(sf["stages.0"]), a1(sf["stages.1"]))
    gt = fsp_matrix(tf["stages.0"], tf["stages.1"])
    assert gs.shape == gt.shape == (4, 32, 64)
    assert out.losses["fsp"].item() == pytest.approx(fsp_loss(gs, gt, "mean").item(), rel=1e-4)


@pytest.mark.parametrize("method", ["at", "nst", "ft", "fsp"])
def test_vector_taps_are_rejected_for_map_methods(method: str) -> None:
    taps = ["fc:input", "fc:input"] if method == "fsp" else ["fc:input"]
    with pytest.raises(TapError, match=r"\(N, C, H, W\)"):
        _distiller({"method": method, "student": taps, "teacher": taps})


def test_parameter_errors_name_the_problem() -> None:
    with pytest.raises(TapError, match="2 student taps but 1 teacher"):
        _distiller({"method": "at", "student": ["stages.0", "stages.1"], "teacher": ["stages.0"]})
    with pytest.raises(ConfigError, match="layer_weights has 1 entries for 2"):
        _distiller({**TERM_SPECS["ab"], "layer_weights": [1.0]})
    with pytest.raises(ConfigError, match="one student and one teacher tap"):
        _distiller(
            {
                "method": "ft",
                "student": ["stages.0", "stages.1"],
                "teacher": ["stages.0", "stages.1"],
            }
        )
    with pytest.raises(ConfigError, match="at least two taps"):
        _distiller({"method": "fsp", "student": ["stages.0"], "teacher": ["stages.0"]})


def test_fitnet_and_ab_work_across_spatial_and_channel_mismatches() -> None:
    # student 16x8x8 against teacher 128x2x2, both ways round for the regressor kernel
    d, x, y = _distiller(
        {"method": "fitnet", "student": ["stages.0"], "teacher": ["stages.2"]},
        {"method": "ab", "student": ["stages.1.relu:input"], "teacher": ["stages.0.relu:input"]},
    )
    out = d(x, y, losses={"fitnet": 1.0, "ab": 1.0})
    assert torch.isfinite(out.total)
    assert d.terms["fitnet"].regressors[0].body[0].kernel_size == (7, 7)


# ------------------------------------------------------------------ pre-stages and recipes


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_pre_stages_are_well_formed(method: str) -> None:
    d, _x, _y = _distiller(TERM_SPECS[method])
    term = d.terms[method]
    stages = term.pre_stages()
    expected = {"fitnet": ["hint"], "ab": ["ab_init"], "ft": ["paraphraser"], "fsp": ["fsp_init"]}
    assert [s.name for s in stages] == expected.get(method, [])
    assert term.in_main_stage == (method in ("at", "nst", "ft"))
    for stage in stages:
        # No fixed length: 1/8 of the main stage, RepDistiller's 30 of 240 epochs.
        assert stage.epochs is None and stage.fraction == 0.125
        assert stage.resolved_epochs(240) == 30 and stage.resolved_epochs(4) == 1
        plan = d.loss_plan(stage.losses)  # raises on unknown terms or loss modes
        assert [t.term_name for t, _m, _w in plan] == [method]
        for path in stage.train:
            d.get_submodule(path)  # raises AttributeError when the path does not exist


def test_renamed_terms_prefix_their_stage_names() -> None:
    d, _x, _y = _distiller({**TERM_SPECS["ab"], "name": "ab2", "init_epochs": 5})
    (stage,) = d.terms["ab2"].pre_stages()
    assert stage.name == "ab2_ab_init" and stage.epochs == 5
    assert stage.train == ["student", "terms.ab2"] and stage.losses == {"ab2": 0.3}


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_digits_recipe_builds_on_the_digits_pair(method: str) -> None:
    cfg = load_config(ROOT / "configs" / "digits" / f"{method}.yaml")
    assert cfg.student.name == "cnn_small" and cfg.teacher is not None
    assert cfg.teacher.name == "cnn_medium"
    d, x, y = _distiller(*[t for t in cfg.distill.terms if t["method"] == method])
    for stage in d.terms[method].pre_stages():
        d.loss_plan(stage.losses)
    assert torch.isfinite(d(x, y).total)


CIFAR = sorted(
    p for p in (ROOT / "configs" / "cifar100").glob("*-*/*.yaml") if p.stem in FEATURE_METHODS
)
REFERENCE_PAIRS = {
    "wrn_40_2-wrn_16_2",
    "wrn_40_2-wrn_40_1",
    "resnet56-resnet20",
    "resnet110-resnet20",
    "resnet110-resnet32",
    "resnet32x4-resnet8x4",
    "vgg13-vgg8",
}


def test_cifar_recipes_cover_every_reference_pair_and_method() -> None:
    for pair in REFERENCE_PAIRS:
        assert {p.stem for p in CIFAR if p.parent.name == pair} == set(FEATURE_METHODS)


@pytest.mark.parametrize("path", CIFAR, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_cifar_recipe_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.teacher is not None
    assert f"{cfg.teacher.name}-{cfg.student.name}" == path.parent.name
    terms = build_terms(cfg.distill.terms)
    assert [t.method for t in terms] == ["ce", path.stem]


def _cifar_term(pair: str, method: str) -> dict:
    terms = load_config(ROOT / "configs" / "cifar100" / pair / f"{method}.yaml").distill.terms
    (term,) = [t for t in terms if t["method"] == method]
    return term


@pytest.mark.parametrize("pair", sorted(REFERENCE_PAIRS))
def test_cifar_recipes_follow_the_reference_code(pair: str) -> None:
    # the conventions in shared/references.md, checked against RepDistiller / mdistiller
    at = build_terms([_cifar_term(pair, "at")])[0]
    assert at.params.per_position and at.weight == 2000  # RepDistiller's 1000, no 1/2
    assert build_terms([_cifar_term(pair, "nst")])[0].weight == 100  # its 50, no 1/2
    fit = build_terms([_cifar_term(pair, "fitnet")])[0]
    p = fit.params
    assert (p.main_stage, p.hint_epochs, p.regressor_bn, p.regressor_relu) == (True, 0, True, True)
    assert fit.weight == 100 and p.reduction == "mean" and fit.pre_stages() == []
    ab = build_terms([_cifar_term(pair, "ab")])[0]
    n = len(ab.params.student)
    assert ab.params.layer_weights == [2.0 ** (i - n + 1) for i in range(n)]
    assert (ab.params.reduction, ab.weight, ab.params.init_epochs) == ("paper", 0.003, 30)
    fsp = build_terms([_cifar_term(pair, "fsp")])[0]
    assert fsp.weight == 1 and fsp.params.init_epochs == 30  # the init's plain sum
    ft = build_terms([_cifar_term(pair, "ft")])[0]
    vgg = pair.startswith("vgg")
    assert ft.params.paraphraser_lr == (None if vgg else 0.01) and not ft.params.paraphraser_bn
    beta = 2.0 if pair.startswith(("resnet56", "resnet110")) else 8.0 if "x4" in pair else 6.0
    assert build_terms([_cifar_term(pair, "dkd")])[0].params.beta == beta
    assert build_terms([_cifar_term(pair, "crd")])[0].params.negatives == "other_class"
    # kdlab's SP / PKT are b times RepDistiller's values: 3000 and 30000 at batch 64
    assert build_terms([_cifar_term(pair, "sp")])[0].weight == 3000 / 64
    assert build_terms([_cifar_term(pair, "pkt")])[0].weight == 30000 / 64


@pytest.mark.parametrize("pair", sorted(REFERENCE_PAIRS))
def test_cifar_recipes_build_on_their_pair(pair: str) -> None:
    from kdlab.models import MODELS  # noqa: PLC0415

    teacher_name, student_name = pair.split("-")
    if teacher_name not in MODELS or student_name not in MODELS:
        pytest.skip("the CIFAR zoo is not registered")
    # the six recipes' feature terms in one Distiller: one probe on a 32x32 batch checks
    # that every tap resolves and every adapter builds
    specs = [load_config(p).distill.terms[1] for p in CIFAR if p.parent.name == pair]
    terms = build_terms(specs)
    teacher = create_model(teacher_name, 100, 3)
    student = create_model(student_name, 100, 3)
    d = Distiller(student, teacher, terms, example_input=torch.randn(2, 3, 32, 32))
    assert sorted(d.terms) == sorted(FEATURE_METHODS)
    for term in terms:
        for stage in term.pre_stages():
            d.loss_plan(stage.losses)
            for module in stage.train:
                d.get_submodule(module)


@pytest.mark.parametrize("method", ["fitnet", "ab", "ft", "fsp"])
def test_digits_recipe_runs_its_pre_stage_then_main_through_the_engine(
    method: str, tmp_path: Path
) -> None:
    # tests/test_methods_registry.py trains every recipe; this checks the stage order.
    from kdlab.engine import train  # noqa: PLC0415 - the engine pulls in ignite

    overrides = [
        "teacher.checkpoint=null",  # a random teacher: this checks the plumbing only
        "data.per_class=4",  # 40 training samples, batches of 20: two steps a stage
        "data.batch_size=20",
        "train.epochs=1",
        "train.pre_stage_epochs=1",
        "train.progress=false",
        "train.device=cpu",
        f"output_dir={tmp_path}",
    ]
    cfg = load_config(ROOT / "configs" / "digits" / f"{method}.yaml", overrides)
    result = train(cfg, tmp_path / method)
    rows = (tmp_path / method / "metrics.jsonl").read_text().splitlines()
    stages = [json.loads(r)["stage"] for r in rows]
    expected = {"fitnet": "hint", "ab": "ab_init", "ft": "paraphraser", "fsp": "fsp_init"}
    assert stages == [expected[method], "main"]
    assert 0.0 <= result.test_acc_last <= 100.0


# wrn_40_2 -> shufflenetv1 (channels 32/64/128 vs 240/480/960, student maps half as large):
# every method that can adapt does; FSP without adapters names the layers.
CROSS = {
    "fitnet": {"student": ["layer2"], "teacher": ["block2"], "regressor": 1},
    "at": {"student": ["layer1", "layer2"], "teacher": ["block1", "block2"]},
    "nst": {"student": ["layer1", "layer2"], "teacher": ["block1", "block2"]},
    "ab": {
        "student": ["layer1.3.relu:input", "layer2.7.relu:input"],
        "teacher": ["block2.layer.0.relu1:input", "block3.layer.0.relu1:input"],
    },
    "ft": {"student": ["layer2"], "teacher": ["block2"]},
    "fsp": {"student": ["layer1", "layer2"], "teacher": ["block1", "block2"], "adapter": True},
}


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_cross_architecture_pair_wrn_to_shufflenet(method: str) -> None:
    from kdlab.models import MODELS  # noqa: PLC0415

    if "shufflenetv1" not in MODELS or "wrn_40_2" not in MODELS:
        pytest.skip("the CIFAR zoo is not registered")
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    teacher, student = create_model("wrn_40_2", 100, 3), create_model("shufflenetv1", 100, 3)
    spec = {"method": method, **CROSS[method]}
    d = Distiller(student, teacher, build_terms([spec]), example_input=x).train()
    term = d.terms[method]
    losses = dict(term.pre_stages()[0].losses) if term.pre_stages() else {method: 1.0}
    out = d(x, y, losses=losses)
    assert torch.isfinite(out.total) and out.total.item() > 0
    out.total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    if method == "fsp":
        with pytest.raises(TapError, match="'layer1' has 240 channels but teacher tap 'block1'"):
            Distiller(student, teacher, build_terms([{**spec, "adapter": False}]), example_input=x)
