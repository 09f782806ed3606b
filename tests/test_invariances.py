"""The scale invariances the methods' defaults rely on (issue 10: defaults that transfer).

Where a paper's form makes the loss depend on the batch size, the map size or the class
count, kdlab's default form does not, so one default weight holds on other data: the
value is unchanged when the batch is repeated, when a map is upsampled (nearest, so the
statistics are identical) or when the classes are repeated. The paper's forms are kept
behind a parameter and shown to move.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdlab.functional.features import (
    activation_boundary_loss,
    factor_transfer,
    fsp_loss,
    fsp_matrix,
    nst_mmd2,
)
from kdlab.functional.logits import logit_regression
from kdlab.methods import Pass, StepContext, build_term
from kdlab.methods.base import Shapes
from kdlab.taps import Tap


def _term_value(spec: dict, fs: torch.Tensor, ft: torch.Tensor) -> float:
    """A term's value on given student / teacher features at taps 's' and 't'."""
    term = build_term({**spec, "student": ["s"], "teacher": ["t"]})
    b = fs.shape[0]
    term.setup(
        Shapes(
            student={Tap("s"): fs.shape, Tap(""): torch.Size([b, 10])},
            teacher={Tap("t"): ft.shape},
        )
    )
    ctx = StepContext(
        student=Pass(fs, torch.zeros(b, 10, dtype=fs.dtype), {Tap("s"): fs}),
        teacher=Pass(ft, torch.zeros(b, 10, dtype=ft.dtype), {Tap("t"): ft}),
        targets=torch.zeros(b, dtype=torch.long),
    )
    return float(term(ctx))


def _twice(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x])


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def _maps(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).relu()


def test_sp_term_does_not_change_with_the_batch_size() -> None:
    fs, ft = _maps(6, 3, 4, 4), _maps(6, 5, 2, 2, seed=1)
    one = _term_value({"method": "sp", "weight": 1}, fs, ft)
    assert one > 0
    assert _term_value({"method": "sp", "weight": 1}, _twice(fs), _twice(ft)) == pytest.approx(
        one, rel=1e-12
    )


def test_pkt_term_does_not_change_with_the_batch_size() -> None:
    fs, ft = _maps(6, 5), _maps(6, 9, seed=1)
    spec = {"method": "pkt", "weight": 1, "include_self": True}
    one = _term_value(spec, fs, ft)
    assert one > 0
    # equal up to the eps (1e-7) added inside the logs, which the halved probabilities feel
    assert _term_value(spec, _twice(fs), _twice(ft)) == pytest.approx(one, rel=1e-5)


def test_at_term_does_not_change_with_the_map_size_unless_per_position() -> None:
    fs, ft = _maps(3, 2, 4, 4), _maps(3, 5, 4, 4, seed=1)
    one = _term_value({"method": "at"}, fs, ft)
    assert one > 0
    assert _term_value({"method": "at"}, _up(fs), _up(ft)) == pytest.approx(one, rel=1e-9)
    paper = {"method": "at", "per_position": True}
    small = _term_value(paper, fs, ft)
    assert small == pytest.approx(one / 16)  # divided by H*W = 16
    assert _term_value(paper, _up(fs), _up(ft)) == pytest.approx(small / 4, rel=1e-9)


def test_nst_and_fsp_do_not_change_with_the_map_size() -> None:
    fs, ft = _maps(2, 3, 4, 4), _maps(2, 5, 4, 4, seed=1)
    base = nst_mmd2(fs, ft).item()
    assert base > 0 and nst_mmd2(_up(fs), _up(ft)).item() == pytest.approx(base, rel=1e-9)
    a, b, c, d = (
        _maps(2, 3, 4, 4),
        _maps(2, 4, 4, 4, seed=1),
        _maps(2, 3, 4, 4, seed=2),
        _maps(2, 4, 4, 4, seed=3),
    )
    base = fsp_loss(fsp_matrix(a, b), fsp_matrix(c, d), "mean").item()
    up = fsp_loss(fsp_matrix(_up(a), _up(b)), fsp_matrix(_up(c), _up(d)), "mean").item()
    assert base > 0 and up == pytest.approx(base, rel=1e-9)
    # the 'mean' reduction also holds when every channel is repeated; the paper's sum not
    rep = [torch.cat([m, m], dim=1) for m in (a, b, c, d)]
    assert fsp_loss(fsp_matrix(rep[0], rep[1]), fsp_matrix(rep[2], rep[3]), "mean").item() == (
        pytest.approx(base, rel=1e-9)
    )
    paper = fsp_loss(fsp_matrix(a, b), fsp_matrix(c, d), "paper").item()
    assert fsp_loss(fsp_matrix(rep[0], rep[1]), fsp_matrix(rep[2], rep[3]), "paper").item() == (
        pytest.approx(4 * paper, rel=1e-9)
    )


def test_ab_mean_does_not_change_with_the_map_size_the_paper_sum_does() -> None:
    s = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    t = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    mean = activation_boundary_loss(s, t, 1.0, "mean").item()
    assert mean > 0
    assert activation_boundary_loss(_up(s), _up(t), 1.0, "mean").item() == pytest.approx(mean)
    paper = activation_boundary_loss(s, t, 1.0, "paper").item()
    assert paper == pytest.approx(mean * 4 * 4 * 4)
    assert activation_boundary_loss(_up(s), _up(t), 1.0, "paper").item() == pytest.approx(4 * paper)
    # the method's default is the mean
    assert build_term({"method": "ab", "student": ["a"], "teacher": ["b"]}).params.reduction == (
        "mean"
    )


def test_ft_sqrt_reduction_does_not_change_with_the_factor_size() -> None:
    fs, ft = (
        torch.randn(3, 2, 4, 4, dtype=torch.float64),
        torch.randn(3, 2, 4, 4, dtype=torch.float64),
    )
    base = factor_transfer(fs, ft, 1, "sqrt").item()
    assert base > 0
    assert factor_transfer(_up(fs), _up(ft), 1, "sqrt").item() == pytest.approx(base, rel=1e-9)
    mean = factor_transfer(fs, ft, 1, "mean").item()
    assert factor_transfer(_up(fs), _up(ft), 1, "mean").item() == pytest.approx(mean / 2)
    paper = factor_transfer(fs, ft, 1, "paper").item()
    assert factor_transfer(_up(fs), _up(ft), 1, "paper").item() == pytest.approx(2 * paper)
    assert base == pytest.approx(paper / (2 * 4 * 4) ** 0.5)
    # p = 2: the per-sample norm of unit vectors needs no division
    assert factor_transfer(_up(fs), _up(ft), 2, "sqrt").item() == pytest.approx(
        factor_transfer(fs, ft, 2, "sqrt").item(), rel=1e-9
    )


def test_logit_regression_mean_does_not_change_with_the_class_count() -> None:
    zs, zt = torch.randn(5, 10, dtype=torch.float64), torch.randn(5, 10, dtype=torch.float64)
    mean = logit_regression(zs, zt, "mean").item()
    both = logit_regression(torch.cat([zs, zs], 1), torch.cat([zt, zt], 1), "mean").item()
    assert both == pytest.approx(mean)
    paper = logit_regression(zs, zt).item()
    assert paper == pytest.approx(mean * 10 / 2)
    assert logit_regression(torch.cat([zs, zs], 1), torch.cat([zt, zt], 1)).item() == (
        pytest.approx(2 * paper)
    )
    assert build_term({"method": "logits"}).params.reduction == "mean"
