"""Degradation views: exact behaviour of each op, registration, and the cqd loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdlab.views.degrade as dg
from kdlab.errors import ConfigError
from kdlab.functional.cqd import soft_cross_entropy
from kdlab.views import VIEWS, build_views


def _batch(seed: int = 0, c: int = 3, h: int = 8, w: int = 8) -> torch.Tensor:
    return torch.randn(4, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_all_degradations_registered_as_views() -> None:
    for name in ("downsample", "gaussian_blur", "additive_noise", "grayscale", "quantize"):
        assert name in VIEWS
    views = build_views({"low": {"type": "downsample", "size": 4}})
    assert views["low"](_batch()).shape == (4, 3, 8, 8)


def test_downsample_to_same_size_is_identity() -> None:
    x = _batch()
    assert torch.equal(dg.downsample(x, 8), x)
    assert torch.equal(dg.downsample(x, [8, 8]), x)


def test_downsample_by_two_is_block_average_then_bilinear() -> None:
    x = _batch(1, c=1)
    y = dg.downsample(x, 4, up_mode="nearest")
    # area down-sampling by 2 = mean of each 2x2 block; nearest up-sampling repeats it
    blocks = x.numpy().reshape(4, 1, 4, 2, 4, 2).mean(axis=(3, 5))
    expect = blocks.repeat(2, axis=2).repeat(2, axis=3)
    np.testing.assert_allclose(y.numpy(), expect, atol=1e-6)
    # bilinear up-sampling keeps each image's mean up to border effects, loses detail
    z = dg.downsample(x, 4)
    assert z.shape == x.shape
    assert not torch.allclose(z, x)


def test_blur_preserves_constant_image_and_matches_numpy_kernel() -> None:
    const = torch.full((2, 3, 8, 8), 2.5)
    torch.testing.assert_close(dg.gaussian_blur(const, 1.3), const)
    sigma = 0.8
    k = dg.gaussian_kernel1d(sigma).double().numpy()
    r = math.ceil(3 * sigma)
    t = np.arange(-r, r + 1)
    ref = np.exp(-(t**2) / (2 * sigma**2))
    np.testing.assert_allclose(k, ref / ref.sum(), rtol=1e-6)
    # an impulse in the middle of a large image becomes the outer product of the kernel
    x = torch.zeros(1, 1, 15, 15)
    x[0, 0, 7, 7] = 1.0
    y = dg.gaussian_blur(x, sigma)[0, 0].double().numpy()
    np.testing.assert_allclose(y[7 - r : 8 + r, 7 - r : 8 + r], np.outer(k, k), atol=1e-7)
    assert abs(y.sum() - 1.0) < 1e-6
    assert torch.equal(dg.gaussian_blur(x, 0.0), x)


def test_noise_statistics_and_seeded_view_is_repeatable() -> None:
    x = torch.zeros(200, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    y = dg.additive_noise(x, 0.5, generator=g)
    assert abs(float(y.std()) - 0.5) < 0.02 and abs(float(y.mean())) < 0.02
    u = dg.additive_noise(x, 0.5, kind="uniform", generator=g)
    assert abs(float(u.std()) - 0.5) < 0.02 and float(u.abs().max()) <= 0.5 * math.sqrt(3) + 1e-6
    view = VIEWS.get("additive_noise")(sigma=0.3, seed=7)
    assert torch.equal(view(x), view(x))
    fresh = VIEWS.get("additive_noise")(sigma=0.3)
    assert not torch.equal(fresh(x), fresh(x))


def test_grayscale_channels_equal_the_mean() -> None:
    x = _batch(2)
    y = dg.grayscale(x)
    assert y.shape == x.shape
    for c in range(3):
        torch.testing.assert_close(y[:, c], x.mean(dim=1))


def test_quantize_level_count_and_values() -> None:
    ramp = torch.linspace(-1, 3, 64).view(1, 1, 8, 8)
    for levels in (2, 3, 5, 16):
        q = dg.quantize(ramp, levels)
        vals = torch.unique(q)
        assert len(vals) == levels
        np.testing.assert_allclose(vals.numpy(), np.linspace(-1, 3, levels), atol=1e-6)
    x = _batch(3)
    assert all(len(torch.unique(dg.quantize(x, 4)[i])) <= 4 for i in range(4))
    fixed = dg.quantize(torch.tensor([[-5.0, 0.24, 0.26, 9.0]]), 3, low=0.0, high=1.0)
    assert fixed.tolist() == [[0.0, 0.0, 0.5, 1.0]]
    with pytest.raises(ConfigError, match="levels"):
        build_views({"q": {"type": "quantize", "levels": 1}})


def test_chain_and_degrade_tensor_are_reproducible() -> None:
    spec = {
        "type": "degrade",
        "steps": [{"type": "downsample", "size": 4}, {"type": "additive_noise", "sigma": 0.2}],
    }
    x = _batch(4)
    a = dg.degrade_tensor(x, spec, seed=3, batch=3)
    b = dg.degrade_tensor(x, spec, seed=3)
    torch.testing.assert_close(a[:3], b[:3])  # the same seed gives the same first chunk
    c = dg.degrade_tensor(x, {"type": "downsample", "size": 4})
    torch.testing.assert_close(c, dg.downsample(x, 4))
    with pytest.raises(ConfigError, match="unexpected keyword|size"):
        build_views({"bad": {"type": "downsample", "sise": 4}})


def test_soft_cross_entropy_matches_numpy_and_kl_plus_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    T = 3.0

    def softmax(a: np.ndarray) -> np.ndarray:
        e = np.exp(a - a.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    pt, ps = softmax(zt.double().numpy() / T), softmax(zs.double().numpy() / T)
    ref = float(-(pt * np.log(ps)).sum(axis=1).mean())
    got = float(soft_cross_entropy(zs, zt, T))
    assert got == pytest.approx(ref, rel=1e-5)
    entropy = float(-(pt * np.log(pt)).sum(axis=1).mean())
    kl = F.kl_div(F.log_softmax(zs / T, 1), F.log_softmax(zt / T, 1), reduction="batchmean",
                  log_target=True)
    assert got == pytest.approx(float(kl) + entropy, rel=1e-5)
    # minimised (= the teacher's entropy) when the student matches the teacher
    assert float(soft_cross_entropy(zt, zt, T)) == pytest.approx(entropy, rel=1e-5)


def test_cqd_term_feeds_teacher_clean_and_student_degraded() -> None:
    from kdlab.config import load_config
    from kdlab.distiller import Distiller
    from kdlab.methods import build_terms
    from kdlab.models import create_model

    cfg = load_config("configs/digits/cqd.yaml")
    torch.manual_seed(0)
    s, t = create_model("cnn_small", 10, 1), create_model("cnn_medium", 10, 1)
    x = torch.randn(8, 1, 8, 8)
    y = torch.arange(8)
    d = Distiller(s, t, build_terms(cfg.distill.terms), build_views(cfg.distill.views), x)
    d.train()
    s.eval()  # BN in eval so that a second forward gives the same logits
    out = d(x, y)
    with torch.no_grad():
        zs, zt = s(dg.downsample(x, 4)), t(x)
    assert float(out.losses["ce"]) == pytest.approx(float(F.cross_entropy(zs, y)), rel=1e-5)
    assert float(out.losses["cqd"]) == pytest.approx(float(soft_cross_entropy(zs, zt, 4.0)), 1e-5)


def test_student_batchnorm_sees_only_the_degraded_view() -> None:
    """No extra train-mode forward on the clean batch may move the student's BN stats."""
    from kdlab.distiller import Distiller
    from kdlab.methods import build_terms
    from kdlab.models import create_model

    torch.manual_seed(0)
    s = create_model("cnn_small", 10, 1)
    ref = create_model("cnn_small", 10, 1)
    ref.load_state_dict(s.state_dict())
    x = torch.randn(8, 1, 8, 8) * 3 + 1
    views = build_views({"degraded": {"type": "downsample", "size": 2}})
    terms = build_terms([{"method": "ce", "student_view": "degraded"}])
    d = Distiller(s, None, terms, views, x)
    d.train()
    d(x, torch.arange(8))
    ref.train()
    ref(dg.downsample(x, 2))
    torch.testing.assert_close(s.stages[0].bn.running_mean, ref.stages[0].bn.running_mean)
    torch.testing.assert_close(s.stages[0].bn.running_var, ref.stages[0].bn.running_var)


def test_cqd_protocol_runs_and_saves_its_table(tmp_path) -> None:  # noqa: ANN001
    from kdlab.cli import main

    code = main(["protocol", "cqd", "--seeds", "0", "--epochs", "1", "--degradations",
                 "lowres4", "--out", str(tmp_path), "student.name=cnn_tiny",
                 "teacher.name=cnn_tiny", "data.per_class=20"])
    assert code == 0
    table = (tmp_path / "table.md").read_text()
    for row in ("clean teacher (reference)", "| labels only", "| CQD"):
        assert row in table
    runs = (tmp_path / "runs.csv").read_text().splitlines()
    assert len(runs) == 1 + 3  # header, teacher, one run per arm
