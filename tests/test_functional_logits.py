"""ce / kd / logits against values computed independently (plain Python math)."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.functional import cross_entropy, kd_loss, logit_regression


def _softmax(z: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(v / t) for v in z]
    s = sum(e)
    return [v / s for v in e]


ZS = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
ZT = [[3.0, 2.0, 1.0], [0.0, 0.0, 2.0]]


def test_cross_entropy_by_hand() -> None:
    y = [2, 0]
    want = -sum(math.log(_softmax(z)[c]) for z, c in zip(ZS, y)) / 2
    got = cross_entropy(torch.tensor(ZS), torch.tensor(y))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_label_smoothing_by_hand() -> None:
    eps, y = 0.1, [2, 0]
    total = 0.0
    for z, c in zip(ZS, y):
        logp = [math.log(p) for p in _softmax(z)]
        target = [eps / 3 + (1 - eps) * (k == c) for k in range(3)]
        total += -sum(t * lp for t, lp in zip(target, logp))
    got = cross_entropy(torch.tensor(ZS), torch.tensor(y), label_smoothing=eps)
    assert got.item() == pytest.approx(total / 2, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_loss_by_hand(temperature: float) -> None:
    kl = 0.0
    for zs, zt in zip(ZS, ZT):
        ps, pt = _softmax(zs, temperature), _softmax(zt, temperature)
        kl += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))
    want = kl / 2 * temperature**2
    got = kd_loss(torch.tensor(ZS), torch.tensor(ZT), temperature)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_kd_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    z = torch.randn(5, 7)
    assert kd_loss(z, z.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-7)
    assert kd_loss(z, torch.randn(5, 7), 4.0).item() > 0


def test_kd_gradient_matches_hinton_form() -> None:
    # dL/dz_s = T^2 * (1/T) (p_s - p_t) / N  (Hinton et al. sec. 2.1, with the T^2 factor)
    t = 3.0
    zs = torch.tensor(ZS, requires_grad=True)
    kd_loss(zs, torch.tensor(ZT), t).backward()
    ps = torch.softmax(torch.tensor(ZS) / t, 1)
    pt = torch.softmax(torch.tensor(ZT) / t, 1)
    assert torch.allclose(zs.grad, t * (ps - pt) / 2, atol=1e-6)


def test_logit_regression_by_hand() -> None:
    want = 0.5 * sum(sum((a - b) ** 2 for a, b in zip(s, t)) for s, t in zip(ZS, ZT)) / 2
    got = logit_regression(torch.tensor(ZS), torch.tensor(ZT))
    assert got.item() == pytest.approx(want, rel=1e-6)
