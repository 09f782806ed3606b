from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlab.errors import TapError
from kdlab.taps import FeatureTaps, Tap, probe_shapes, resolve


class Nested(nn.Module):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=inplace)),
            nn.Sequential(nn.Linear(6, 5), nn.ReLU()),
        )
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def test_parse() -> None:
    assert Tap.parse("body.0.1") == Tap("body.0.1", "output")
    assert Tap.parse("fc:input") == Tap("fc", "input")
    assert str(Tap.parse("fc:input")) == "fc:input"
    with pytest.raises(TapError, match="suffix"):
        Tap.parse("fc:inptu")


def test_output_and_input_taps_on_nested_modules() -> None:
    model = Nested()
    x = torch.randn(2, 4)
    taps = FeatureTaps(model, ["body.0.0", "body.0.1:input", "fc:input", "body.1"])
    out = model(x)
    lin = model.body[0][0](x)
    assert torch.equal(taps.get(Tap.parse("body.0.0")), lin)
    assert torch.equal(taps.get(Tap.parse("body.0.1:input")), lin)  # pre-activation
    penult = model.body(x)
    assert torch.equal(taps.get(Tap.parse("fc:input")), penult)
    assert torch.equal(taps.get(Tap.parse("body.1")), penult)
    assert torch.equal(model.fc(penult), out)
    taps.remove()
    taps.clear()
    model(x)
    assert taps.features == {}


def test_input_tap_before_inplace_relu_is_cloned() -> None:
    model = Nested(inplace=True)
    x = torch.randn(8, 4)
    taps = FeatureTaps(model, ["body.0.1:input"])
    model(x)
    pre = taps.get(Tap.parse("body.0.1:input"))
    assert (pre < 0).any()  # still the pre-activation, not overwritten by the ReLU
    assert torch.allclose(pre, model.body[0][0](x))


def test_output_tap_modified_in_place_is_an_error() -> None:
    model = Nested(inplace=True)
    taps = FeatureTaps(model, ["body.0.0"])
    model(torch.randn(2, 4))
    with pytest.raises(TapError, match="modified in place"):
        taps.get(Tap.parse("body.0.0"))


def test_missing_path_lists_nearest() -> None:
    with pytest.raises(TapError, match=r"no module 'body\.0\.2'.*'body\.0\.1'"):
        resolve(Nested(), "body.0.2", "student")
    with pytest.raises(TapError, match="nearest valid paths"):
        FeatureTaps(Nested(), ["bdy"])


def test_probe_shapes_and_mode_restored() -> None:
    model = Nested().train()
    shapes = probe_shapes(model, ["body.0", "fc:input"], torch.randn(3, 4))
    assert shapes[Tap("body.0")] == torch.Size([3, 6])
    assert shapes[Tap("fc", "input")] == torch.Size([3, 5])
    assert shapes[Tap("")] == torch.Size([3, 3])
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
