"""The 1-D CNN family: shapes, documented taps, gradients, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

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
    with pytest.raises(ValueError, match=r"SmallCNN1d takes \(N, C, L\) sequences.*layout: ncl"):
        model(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"SmallCNN takes \(N, C, H, W\) images"):
        create_model("cnn_small", num_classes=3, in_channels=1)(torch.randn(2, 1, 8))
    with pytest.raises(ModelError, match="kernel_size must be odd"):
        create_model("cnn1d", num_classes=3, kernel_size=4)


SEQUENCE_PLUGIN = """
import math

import torch

from kdlab.data import DATASETS, DataBundle, TensorSplit


@DATASETS.register("_toy_waves")
def toy_waves(cfg):
    # Class k: a sine of frequency k + 1 on 2 channels of 32 steps, plus noise.
    g = torch.Generator().manual_seed(cfg.split_seed)

    def split(n):
        y = torch.arange(n) % 3
        t = torch.linspace(0, 1, 32)
        x = torch.sin(2 * math.pi * (y[:, None, None] + 1) * t).expand(n, 2, 32)
        return TensorSplit(x + 0.1 * torch.randn(n, 2, 32, generator=g), y)

    return DataBundle(split(48), split(12), split(12), num_classes=3, in_channels=2,
                      image_size=(1, 32), name="_toy_waves")
"""


def train_on_waves(tmp_path: Path, terms: list[str]) -> list[dict]:
    """Distil cnn1d_small into cnn1d_tiny on the plugin's sequences from the CLI, one
    epoch, with these recipe terms (YAML flow mappings); the rows of metrics.jsonl."""
    from kdlab import cli
    from kdlab.data import DATASETS

    plugin = tmp_path / "waves.py"
    plugin.write_text(SEQUENCE_PLUGIN)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data: {name: _toy_waves, batch_size: 16}\n"
        "student: {name: cnn1d_tiny}\n"
        "teacher: {name: cnn1d_small}\n"
        "distill:\n"
        "  terms:\n"
        + "".join(f"    - {t}\n" for t in terms)
        + "train: {epochs: 1, progress: false, threads: 1}\n"
    )
    try:
        code = cli.main(
            ["--plugin", str(plugin), "train", str(recipe), "--run-dir", str(tmp_path / "run")]
        )
    finally:
        DATASETS._items.pop("_toy_waves", None)
    assert code == 0
    return [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_a_1d_pair_trains_kd_and_sp_from_the_cli(tmp_path: Path) -> None:
    terms = [
        "{method: ce, weight: 0.1}",
        "{method: kd, weight: 0.9}",
        "{method: sp, student: [stages.1], teacher: [stages.1]}",
    ]
    row = train_on_waves(tmp_path, terms)[-1]
    assert row["train_kd"] > 0 and row["train_sp"] > 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["params"] == count_parameters(create_model("cnn1d_tiny", 3, 2))
