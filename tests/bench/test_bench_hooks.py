"""Bench hooks: few-shot subsets, degraded evaluation splits, labelled share, pseudo-labels."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from kdlab.bench.hooks import DATA_HOOKS, PRE_STEPS, HookContext, bind_hook
from kdlab.config import DataConfig, load_config
from kdlab.data import build_dataset
from kdlab.data.base import DataBundle, TensorSplit
from kdlab.errors import ConfigError
from kdlab.views.degrade import downsample


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return build_dataset(DataConfig(name="digits"))


def _ctx(seed: int = 0, **recipe: object) -> HookContext:
    cfg = load_config({"student": {"name": "cnn_small"}, **recipe})
    return HookContext(seed=seed, cfg=cfg, kind="method")


def _run(name: str, bundle: DataBundle, ctx: HookContext, **params: object) -> DataBundle:
    return bind_hook(DATA_HOOKS, {"hook": name, **params}, "data.0")(bundle, ctx)


def test_few_shot_draws_n_per_class_per_seed_and_repeats(digits: DataBundle) -> None:
    a = _run("few_shot", digits, _ctx(0), per_class=2, epoch_samples=50)
    b = _run("few_shot", digits, _ctx(1), per_class=2, epoch_samples=50)
    assert len(a.train) == 60  # 20 samples repeated 3 times to reach 50
    assert torch.bincount(a.train.y, minlength=10).tolist() == [6] * 10
    assert torch.unique(a.train.x.flatten(1), dim=0).shape[0] == 20
    assert torch.equal(a.train.x[:20], a.train.x[20:40])  # repeated whole, same order
    assert not torch.equal(a.train.x[:20], b.train.x[:20])  # the seed draws the samples
    assert a.val is digits.val and a.test is digits.test
    again = _run("few_shot", digits, _ctx(0), per_class=2, epoch_samples=50)
    assert torch.equal(again.train.x, a.train.x)  # deterministic: a cached run is reusable


def test_degrade_eval_uses_the_runs_view_with_fixed_seeds(digits: DataBundle) -> None:
    low = _ctx(distill={"views": {"degraded": {"type": "downsample", "size": 4}}})
    out = _run("degrade_eval", digits, low)
    assert out.train is digits.train  # the terms degrade training batches per step
    assert digits.val is not None and out.val is not None
    torch.testing.assert_close(out.val.x, downsample(digits.val.x, 4))
    torch.testing.assert_close(out.test.x, downsample(digits.test.x, 4))
    assert torch.equal(out.test.y, digits.test.y)
    noise = {"distill": {"views": {"degraded": {"type": "additive_noise", "sigma": 1.0}}}}
    a = _run("degrade_eval", digits, _ctx(seed=0, **noise))
    b = _run("degrade_eval", digits, _ctx(seed=5, **noise))
    assert torch.equal(a.test.x, b.test.x)  # one degraded copy for every run seed
    assert a.val is not None and b.val is not None and torch.equal(a.val.x, b.val.x)
    noise_sd = float((a.test.x - digits.test.x).std())
    assert noise_sd == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ConfigError, match="no view 'blur'"):
        _run("degrade_eval", digits, low, view="blur")


def test_labelled_subset_keeps_the_rest_unlabelled(digits: DataBundle) -> None:
    out = _run("labelled_subset", digits, _ctx(seed=3), fraction=0.1)
    rest = out.extra["unlabelled"]
    assert isinstance(rest, TensorSplit)
    assert len(out.train) + len(rest) == len(digits.train)
    assert abs(len(out.train) - 0.1 * len(digits.train)) <= 10  # stratified, per class
    assert torch.bincount(out.train.y).min() >= 12
    other = _run("labelled_subset", digits, _ctx(seed=4), fraction=0.1)
    assert torch.equal(other.train.x, out.train.x)  # fixed by data.split_seed, not the seed
    with pytest.raises(ConfigError, match="fraction must lie in"):
        _run("labelled_subset", digits, _ctx(), fraction=1.5)


class _Oracle(nn.Module):
    """A 'teacher' whose logits are a one-hot of a fixed label per input value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = x.flatten(1)[:, 0].round().long() % 3
        return 10.0 * nn.functional.one_hot(labels, 3).float()


def _tiny_bundle() -> DataBundle:
    x = torch.arange(40.0).view(40, 1, 1, 1)
    y = x.flatten().long() % 3
    split = TensorSplit(x, y)
    return DataBundle(split, None, split, num_classes=3, in_channels=1, image_size=(1, 1))


def test_pseudo_labels_join_the_labelled_share_and_match_steps() -> None:
    teacher_cfg = load_config({"student": {"name": "cnn_small"}, "train": {"epochs": 30}})
    teacher_cfg.data.batch_size = 4
    ctx = _ctx(seed=0, train={"epochs": 2})
    ctx.cfg.data.batch_size = 8
    labelled = _run("labelled_subset", _tiny_bundle(), ctx, fraction=0.25)
    assert len(labelled.train) == 10
    ctx = dataclasses.replace(ctx, teacher_cfg=teacher_cfg, load_teacher=lambda b: _Oracle())
    step = bind_hook(PRE_STEPS, {"hook": "pseudo_labels", "threshold": 0.5}, "pre.0")
    out, cfg = step(labelled, ctx)
    rest = labelled.extra["unlabelled"]
    assert len(out.train) == 40 and "unlabelled" not in out.extra
    assert torch.equal(out.train.x[:10], labelled.train.x)  # labelled first, then pseudo
    assert torch.equal(out.train.y[10:], (rest.x.flatten().round().long() % 3))
    assert out.extra["pre_step"] == {
        "n_labelled": 10,
        "n_unlabelled": 30,
        "n_pseudo": 30,
        "pseudo_acc": 100.0,
    }
    # the teacher had 30 epochs x (10 // 4 = 2 batches: the partial one is dropped) = 60
    # steps; 40 samples at batch 8 are 5 steps per epoch: 12 epochs, more than the 2 set
    assert cfg.train.epochs == 12 and ctx.cfg.train.epochs == 2
    strict = bind_hook(PRE_STEPS, {"hook": "pseudo_labels", "threshold": 1.0}, "pre.0")
    few, _ = strict(labelled, ctx)
    assert few.extra["pre_step"]["n_pseudo"] == 0  # softmax of 10 x one-hot is below 1
    with pytest.raises(ConfigError, match="labelled_subset data hook first"):
        step(_tiny_bundle(), ctx)
