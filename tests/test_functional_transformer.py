"""Golden values of the transformer losses, computed by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.errors import TapError
from kdlab.functional.transformer import attention_kl, hidden_cosine, hidden_mse


def test_attention_kl_by_hand() -> None:
    # One query row each: t = (1/2, 1/2), s = (1/4, 3/4):
    # KL = 1/2 ln(2) + 1/2 ln(2/3) = 1/2 ln(4/3) = 0.1438410362
    # and t = (1, 0), s = (1/2, 1/2): KL = ln 2 = 0.6931471806 (the zero contributes 0).
    t = torch.tensor([[[[0.5, 0.5]], [[1.0, 0.0]]]])  # (N=1, heads=2, L=1, L=2)
    s = torch.tensor([[[[0.25, 0.75]], [[0.5, 0.5]]]])
    assert attention_kl(s, t).item() == pytest.approx((0.5 * math.log(4 / 3) + math.log(2)) / 2)
    assert attention_kl(t, t).item() == 0.0
    with pytest.raises(TapError, match=r"attention_kl: student \(1, 2, 1, 2\)"):
        attention_kl(s, t[:, :1])


def test_hidden_mse_and_cosine_by_hand() -> None:
    hs = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (N=1, L=2, H=2)
    ht = torch.tensor([[[1.0, 1.0], [0.0, -2.0]]])
    # squared differences 0, 1, 0, 16 -> mean 17/4
    assert hidden_mse(hs, ht).item() == pytest.approx(4.25)
    # cos((1,0),(1,1)) = 1/sqrt(2); cos((0,2),(0,-2)) = -1 -> mean of 1 - cos
    expected = ((1 - 1 / math.sqrt(2)) + 2.0) / 2
    assert hidden_cosine(hs, ht).item() == pytest.approx(expected)
    with pytest.raises(TapError, match="hidden_mse"):
        hidden_mse(hs, ht[..., :1])
