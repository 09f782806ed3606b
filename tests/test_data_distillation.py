"""Data distillation: transforms, ensembling, thresholding, and a short pipeline run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kdlab.errors import ConfigError
from kdlab.pipelines import data_distillation as dd
from kdlab.views import geometric as geo


def test_shift_moves_pixels_and_replicates_the_border() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    right = geo.shift(x, dx=1)
    assert torch.equal(right[..., 1:], x[..., :3])
    assert torch.equal(right[..., 0], x[..., 0])  # replicated border column
    up = geo.shift(x, dy=-2)
    assert torch.equal(up[..., :2, :], x[..., 2:, :])
    assert torch.equal(up[..., 3, :], x[..., 3, :])
    assert torch.equal(geo.shift(geo.shift(x, 1, 1), -1, -1)[..., 1:3, 1:3], x[..., 1:3, 1:3])
    with pytest.raises(ConfigError, match="as large"):
        geo.shift(x, dx=4)


def test_scale_identity_zoom_and_constant() -> None:
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(geo.scale(x, 1.0), x)
    const = torch.full((1, 1, 8, 8), 3.0)
    torch.testing.assert_close(geo.scale(const, 1.3), const)
    # zooming in by 2 maps the centre 4x4 block onto the whole image: its mean is kept
    ramp = torch.arange(8.0).repeat(8, 1).view(1, 1, 8, 8)
    z = geo.scale(ramp, 2.0)
    assert float(z.mean()) == pytest.approx(float(ramp[..., 2:6, 2:6].mean()), abs=1e-5)
    assert float(z.min()) > float(ramp.min()) and float(z.max()) < float(ramp.max())


class _Linear(nn.Module):
    """A tiny fixed model: logits = W @ flatten(x)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.t()


def test_ensemble_is_the_average_of_transformed_probabilities_and_threshold_drops() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 4, generator=g) * 2
    x = torch.randn(6, 1, 2, 2, generator=g)
    model = _Linear(w)
    ts = dd.build_transforms([{"type": "identity"}, {"type": "hflip"}, {"type": "vflip"}])
    probs = dd.ensemble_probabilities(model, x, ts, batch_size=4)

    xn, wn = x.numpy(), w.numpy()

    def softmax(a: np.ndarray) -> np.ndarray:
        e = np.exp(a - a.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    views = [xn, xn[..., ::-1], xn[..., ::-1, :]]
    ref = np.mean([softmax(v.reshape(6, 4) @ wn.T) for v in views], axis=0)
    np.testing.assert_allclose(probs.numpy(), ref, rtol=1e-5, atol=1e-6)
    labels, keep = dd.pseudo_labels(probs, threshold=0.0)
    assert labels.tolist() == ref.argmax(axis=1).tolist() and bool(keep.all())
    cut = float(np.median(ref.max(axis=1)))
    _, keep = dd.pseudo_labels(probs, threshold=cut)
    assert keep.tolist() == (ref.max(axis=1) >= cut).tolist()
    assert 0 < int(keep.sum()) < 6


def test_unknown_transform_and_empty_list_are_config_errors() -> None:
    with pytest.raises(Exception, match="unknown view 'shfit'; did you mean 'shift'"):
        dd.build_transforms([{"type": "shfit"}])
    with pytest.raises(ConfigError, match="at least one"):
        dd.build_transforms([])
    with pytest.raises(ConfigError, match="transforms.0 \\(shift\\)"):
        dd.build_transforms([{"type": "shift", "dz": 1}])


def test_split_labelled_is_stratified_and_disjoint() -> None:
    from kdlab.data.base import TensorSplit

    y = torch.arange(100) % 5
    split = TensorSplit(torch.arange(100.0).view(100, 1), y)
    lab, unl = dd.split_labelled(split, 0.1, seed=0)
    assert len(lab) == 10 and len(unl) == 90
    assert np.bincount(lab.y.numpy()).tolist() == [2] * 5
    assert not set(lab.x.flatten().tolist()) & set(unl.x.flatten().tolist())


def test_pipeline_and_omni_protocol_end_to_end(tmp_path) -> None:  # noqa: ANN001
    from kdlab.cli import main

    cfg = dd.load_pipeline_config(
        "configs/digits/data_distillation.yaml",
        ["run.train.epochs=1", "supervised_epochs=2", "run.train.progress=false",
         "run.student.name=cnn_tiny", "threshold=1.0"],
    )
    res = dd.run_data_distillation(cfg, tmp_path / "p", seed=0)
    assert res.n_labelled + res.n_unlabelled > 1000
    assert 0 <= res.n_pseudo < 32  # after 2 epochs hardly any prediction is certain
    # match_steps: the retraining gets the labelled-only run's 2 x 4 steps (batch 32)
    assert len(res.supervised.history) == 2
    assert len(res.distilled.history) == -(-8 // ((res.n_labelled + res.n_pseudo) // 32))
    assert (tmp_path / "p" / "supervised" / "results.json").is_file()
    assert (tmp_path / "p" / "distilled" / "results.json").is_file()

    code = main(["protocol", "omni", "--seeds", "0", "--epochs", "1", "--out",
                 str(tmp_path / "o"), "run.student.name=cnn_tiny"])
    assert code == 0
    table = (tmp_path / "o" / "table.md").read_text()
    assert "| supervised only" in table and "| data distillation" in table
    assert "runs.csv" in {f.name for f in (tmp_path / "o").iterdir()}
