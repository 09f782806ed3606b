"""The 1-D CNN family: shapes, documented taps, gradients, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdlab.errors import ModelError
from kdlab.models import MODELS, count_parameters, create_model
from kdlab.taps import FeatureTaps, Tap, probe_shapes

SEQ_MODELS = [n for n in MODELS.names() if n.startswith("cnn1d")]


def test_the_family_is_registered() -> None:
    assert SEQ_MODELS == ["cnn1d", "cnn1d_large", "cnn1d_medium", "cnn1d_small", "cnn1d_tiny"]


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_every_1d_model_trains_on_sequences(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, in_channels=3).train()
    x = torch.randn(4, 3, 37)  # an odd length: nothing assumes powers of two
    out = model(x)
    assert out.shape == (4, 5) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.arange(4) % 5).backward()
    stem = next(model.parameters())
    assert stem.grad is not None and stem.grad.abs().sum() > 0


def test_documented_taps_and_their_shapes() -> None:
    model = create_model("cnn1d_medium", num_classes=4, in_channels=2)
    taps = ["stages.0", "stages.1", "stages.2", "stages.1.bn", "stages.2.conv", "pool", "fc:input"]
    shapes = probe_shapes(model, taps, torch.randn(1, 2, 40))
    got = {str(t): tuple(s[1:]) for t, s in shapes.items() if t.path}
    # Stride 2 starts every stage after the first; 'same' padding keeps lengths otherwise.
    assert got == {
        "stages.0": (32, 40),
        "stages.1": (64, 20),
        "stages.2": (128, 10),
        "stages.1.bn": (64, 20),
        "stages.2.conv": (128, 10),
        "pool": (128, 1),
        "fc:input": (128,),
    }


def test_fc_input_is_the_pooled_last_stage() -> None:
    torch.manual_seed(0)
    model = create_model("cnn1d_small", num_classes=3, in_channels=1).eval()
    taps = FeatureTaps(model, ["stages.1", "fc:input"])
    x = torch.randn(2, 1, 16)
    logits = model(x)
    last, feats = taps.get(Tap("stages.1")), taps.get(Tap("fc", "input"))
    assert torch.allclose(feats, last.mean(dim=2), atol=1e-6)
    assert torch.allclose(model.fc(feats), logits, atol=1e-6)


def test_parameter_count_by_hand() -> None:
    # cnn1d_tiny (8, 16), kernel 5, 1 input channel, 3 classes: conv weights without bias,
    # BN weight and bias, the classifier with bias.
    expected = (1 * 8 * 5 + 2 * 8) + (8 * 16 * 5 + 2 * 16) + (16 * 3 + 3)
    assert count_parameters(create_model("cnn1d_tiny", num_classes=3, in_channels=1)) == expected


def test_image_input_and_bad_kwargs_are_clear_errors() -> None:
    model = create_model("cnn1d_small", num_classes=3, in_channels=1)
    with pytest.raises(ValueError, match=r"sequences \(N, C, L\).*layout: ncl"):
        model(torch.randn(2, 1, 8, 8))
    with pytest.raises(ModelError, match="kernel_size must be odd"):
        create_model("cnn1d", num_classes=3, kernel_size=4)
