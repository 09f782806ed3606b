"""Adapters built from probed shapes: output shapes, kernels, errors, resampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.adapters import (
    Connector,
    ConvRegressor,
    Paraphraser,
    Translator,
    connector,
    factor_channels,
    resample,
    spatial_size,
)
from kdlab.errors import TapError


def _only_conv(module: nn.Module) -> nn.Module:
    convs = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 1
    return convs[0]


def test_valid_regressor_uses_the_papers_kernel_when_the_student_map_is_larger() -> None:
    reg = ConvRegressor((2, 16, 8, 8), (2, 64, 4, 4), kernel="valid")
    conv = _only_conv(reg)
    assert isinstance(conv, nn.Conv2d)
    assert conv.kernel_size == (5, 5) and conv.padding == (0, 0)  # 8 - 4 + 1
    assert reg(torch.randn(3, 16, 8, 8)).shape == (3, 64, 4, 4)


def test_valid_regressor_is_a_transposed_conv_when_the_student_map_is_smaller() -> None:
    reg = ConvRegressor((2, 8, 4, 4), (2, 12, 8, 8), kernel="valid")
    conv = _only_conv(reg)
    assert isinstance(conv, nn.ConvTranspose2d) and conv.kernel_size == (5, 5)
    assert reg(torch.randn(1, 8, 4, 4)).shape == (1, 12, 8, 8)


def test_equal_sizes_give_a_1x1_conv_and_bn_relu_follow() -> None:
    reg = ConvRegressor((2, 8, 4, 4), (2, 12, 4, 4), bn=True, relu=True)
    assert _only_conv(reg).kernel_size == (1, 1)
    assert [type(m) for m in reg.body] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert (reg(torch.randn(2, 8, 4, 4)) >= 0).all()


def test_1x1_regressor_resamples_and_mixed_sizes_fall_back_to_it() -> None:
    reg = ConvRegressor((2, 8, 8, 8), (2, 4, 2, 2), kernel=1)
    assert _only_conv(reg).kernel_size == (1, 1)
    assert reg(torch.randn(2, 8, 8, 8)).shape == (2, 4, 2, 2)
    mixed = ConvRegressor((2, 8, 8, 2), (2, 4, 4, 4), kernel="valid")
    assert mixed(torch.randn(2, 8, 8, 2)).shape == (2, 4, 4, 4)


def test_vector_regressor_is_linear_and_rank_mismatch_is_a_tap_error() -> None:
    reg = ConvRegressor((2, 10), (2, 6), bn=True)
    assert isinstance(reg.body[0], nn.Linear)
    assert reg(torch.randn(4, 10)).shape == (4, 6)
    with pytest.raises(TapError, match="two maps or two vectors"):
        ConvRegressor((2, 10), (2, 6, 4, 4))


def test_connector_is_1x1_conv_bn_without_relu() -> None:
    conn = Connector((2, 16, 8, 8), (2, 32, 8, 8))
    assert [type(m) for m in conn.body] == [nn.Conv2d, nn.BatchNorm2d]
    assert _only_conv(conn).kernel_size == (1, 1)
    out = conn(torch.randn(4, 16, 8, 8))
    assert out.shape == (4, 32, 8, 8) and (out < 0).any()


def test_ab_connector_is_the_identity_when_shapes_match_else_the_authors_init() -> None:
    # the authors (bhheo/AB_distillation) and RepDistiller connect equal shapes directly
    assert isinstance(connector((2, 16, 8, 8), (2, 16, 8, 8)), nn.Identity)
    torch.manual_seed(0)
    conn = connector((2, 64, 8, 8), (2, 128, 8, 8))
    assert isinstance(conn, Connector)
    conv, bn = conn.body
    # normal(0, sqrt(2 / n)), n = k * k * out_channels = 128
    assert conv.weight.std().item() == pytest.approx((2 / 128) ** 0.5, rel=0.05)
    assert abs(conv.weight.mean().item()) < 0.01 and conv.bias is None
    assert torch.equal(bn.weight, torch.ones(128)) and torch.equal(bn.bias, torch.zeros(128))


def test_paraphraser_encodes_to_rate_times_channels_and_reconstructs_the_shape() -> None:
    para = Paraphraser(64, rate=0.5)
    x = torch.randn(2, 64, 4, 4)
    assert para.encode(x).shape == (2, 32, 4, 4)
    assert para(x).shape == x.shape
    assert factor_channels(10, 0.25) == 2 and factor_channels(1, 0.1) == 1


def test_translator_matches_the_teacher_factor_across_sizes() -> None:
    tr = Translator((2, 32, 4, 4), (2, 128, 2, 2), rate=0.5)
    assert tr(torch.randn(3, 32, 4, 4)).shape == (3, 64, 2, 2)
    with pytest.raises(TapError, match="FT needs"):
        Translator((2, 32), (2, 128, 2, 2))


def test_resample_pools_to_shrink_and_interpolates_to_grow() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    pooled = resample(x, (2, 2))
    assert torch.equal(pooled, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    grown = resample(x, (8, 8))
    expected = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.equal(grown, expected)
    assert resample(x, (4, 4)) is x


def test_spatial_size() -> None:
    assert spatial_size((2, 3, 5, 7)) == (5, 7)
    assert spatial_size((2, 3)) is None
    with pytest.raises(TapError, match="must be"):
        spatial_size((2, 3, 4))
