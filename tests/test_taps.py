from __future__ import annotations

from collections import OrderedDict
from copy import deepcopy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kdlab.config import load_config
from kdlab.data import build_dataset
from kdlab.engine import Trainer, evaluate, load_model, train
from kdlab.errors import ModelError, TapError
from kdlab.models import MODELS, register_model
from kdlab.taps import FeatureTaps, Tap, model_logits, probe_shapes, resolve, select_output


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


# ---------------------------------------------------------------- which output is the logits


class FeaturesFirst(nn.Module):
    """Returns (features, logits): the shape of output that used to train on features."""

    def __init__(self, num_classes: int = 3, in_channels: int = 4, as_dict: bool = False) -> None:
        super().__init__()
        self.body = nn.Linear(in_channels, 6)
        self.fc = nn.Linear(6, num_classes)
        self.as_dict = as_dict

    def forward(self, x: torch.Tensor) -> Any:
        h = self.body(x)
        return {"features": h, "scores": self.fc(h)} if self.as_dict else (h, self.fc(h))


class HFOutput(OrderedDict):
    """Like transformers' ModelOutput: a mapping whose fields are also attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def test_model_logits_never_guesses_between_several_tensors() -> None:
    feats, logits = torch.randn(2, 6), torch.randn(2, 3)
    with pytest.raises(ModelError, match=r"returns a tuple: \[0\] tensor \(2, 6\), \[1\] tensor"):
        model_logits((feats, logits))
    with pytest.raises(ModelError, match=r"'features' tensor \(2, 6\), 'scores' tensor \(2, 3\)"):
        model_logits({"features": feats, "scores": logits}, where="the student")
    assert model_logits((feats, logits), 1) is logits
    assert model_logits((feats, logits), -1) is logits
    assert model_logits({"features": feats, "scores": logits}, "scores") is logits
    assert model_logits((logits, None)) is logits  # the only tensor
    # Hugging Face: .logits by name, wherever it sits (loss first when labels are given).
    hf = HFOutput(loss=torch.tensor(0.5), logits=logits, hidden_states=(feats,))
    assert model_logits(hf) is logits and model_logits(hf, "logits") is logits
    with pytest.raises(ModelError, match=r"output 2 does not exist; .*\[0\].*\[1\]"):
        model_logits((feats, logits), 2)
    with pytest.raises(ModelError, match=r"output 'logit' does not exist.*'scores'"):
        model_logits({"features": feats, "scores": logits}, "logit")


def test_select_output_picks_and_checks_the_logits() -> None:
    model = FeaturesFirst()
    x = torch.randn(5, 4)
    keys = set(model.state_dict())
    select_output(model, 1, num_classes=3)
    assert torch.equal(model(x), model.fc(model.body(x)))
    assert set(model.state_dict()) == keys  # a hook, not an edit
    copy = deepcopy(model)
    select_output(copy, 0, num_classes=3)  # replaces the copy's choice, not the original's
    with pytest.raises(ModelError, match=r"output 0 has shape \(5, 6\), but the data has 3 "):
        copy(x)
    assert model(x).shape == (5, 3)
    select_output(model, None, num_classes=3)  # no choice: still an error, not a guess
    with pytest.raises(ModelError, match="which one is the logits"):
        model(x)
    named = select_output(FeaturesFirst(as_dict=True), "scores", num_classes=3)
    assert named(x).shape == (5, 3)


def test_a_recipe_chooses_the_logits_and_the_class_count_checks_them(tmp_path: Path) -> None:
    name = "test_features_first"
    if name not in MODELS:
        register_model(name)(lambda num_classes, in_channels: _FlatFeaturesFirst(num_classes))
    base = {
        "output_dir": str(tmp_path),
        "student": {"name": name},
        "data": {"per_class": 5, "batch_size": 16},
        "train": {"epochs": 1, "progress": False},
    }
    # Before: cross-entropy ran on the 6 features and reported an accuracy.
    with pytest.raises(ModelError, match=r"test_features_first. returns a tuple: \[0\] tensor"):
        Trainer(load_config(base))
    bad = {**base, "student": {"name": name, "output": 0}}
    with pytest.raises(ModelError, match=r"output 0 has shape \(2, 6\), but the data has 10"):
        Trainer(load_config(bad))
    good = load_config({**base, "student": {"name": name, "output": 1}})
    res = train(good)
    model = load_model(name, {}, res.run_dir, 10, 1, output=1)
    test = build_dataset(good.data).test
    assert res.test_acc_best == pytest.approx(evaluate(model, test)["acc1"])


class _FlatFeaturesFirst(FeaturesFirst):
    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes, in_channels=64)

    def forward(self, x: torch.Tensor) -> Any:
        return super().forward(x.flatten(1))
