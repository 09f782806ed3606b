"""Speed options that must not change results: teacher caching, step seeding, no_grad teacher."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from kdlab.config import load_config
from kdlab.distiller import Distiller
from kdlab.engine import train
from kdlab.engine.step import seed_step
from kdlab.errors import ConfigError, TapError
from kdlab.methods import StepContext, Term, TermParams
from kdlab.models import create_model


class _FeatParams(TermParams):
    student: list[str] = ["stages.1"]
    teacher: list[str] = ["stages.1"]


class _FeatMSE(Term):
    """A feature term for these tests only (``method`` empty: not registered)."""

    Params = _FeatParams

    def setup(self, shapes) -> None:  # noqa: ANN001
        s = shapes.student[self.student_taps()[0]]
        t = shapes.teacher[self.teacher_taps()[0]]
        self.proj = nn.Conv2d(s[1], t[1], 1)

    def forward(self, ctx: StepContext) -> Tensor:
        return (self.proj(ctx.s("stages.1")) - ctx.t("stages.1")).pow(2).mean()


def _distiller(cache: bool) -> tuple[Distiller, list[int]]:
    torch.manual_seed(0)
    student = create_model("cnn_small", 10, 1)
    teacher = create_model("cnn_medium", 10, 1)
    calls: list[int] = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(1))
    term = _FeatMSE(_FeatParams(method="feat", name="feat"))
    d = Distiller(student, teacher, [term], example_input=torch.randn(2, 1, 8, 8))
    if cache:
        d.enable_teacher_cache(32)
    calls.clear()
    return d, calls


def test_teacher_cache_returns_the_same_outputs_without_a_forward() -> None:
    x = torch.randn(32, 1, 8, 8)
    y = torch.randint(0, 10, (32,))
    plain, plain_calls = _distiller(cache=False)
    cached, cached_calls = _distiller(cache=True)
    for _ in range(2):  # two "epochs" over the same two batches
        for idx in (torch.arange(0, 16), torch.arange(16, 32)):
            a = plain(x[idx], y[idx], idx)
            b = cached(x[idx], y[idx], idx)
            torch.testing.assert_close(a.total, b.total, rtol=0, atol=0)
            for k in a.losses:
                torch.testing.assert_close(a.losses[k], b.losses[k], rtol=0, atol=0)
    assert len(plain_calls) == 4
    assert len(cached_calls) == 2  # only the first epoch runs the teacher
    # a batch mixing seen and unseen samples falls back to the teacher
    cached._teacher_cache.filled[3] = False
    cached(x[:16], y[:16], torch.arange(16))
    assert len(cached_calls) == 3


def test_teacher_features_are_constants_with_version_checks() -> None:
    d, _ = _distiller(cache=False)
    x = torch.randn(4, 1, 8, 8)
    out = d(x, torch.zeros(4, dtype=torch.long), torch.arange(4))
    out.total.backward()
    assert all(p.grad is None for p in d.teacher.parameters())
    t_pass = d._teacher_pass(x, False)
    feat = t_pass.features[next(iter(t_pass.features))]
    assert not feat.is_inference() and not feat.requires_grad
    # the in-place check catches teacher taps too (at the shape probe)
    teacher = create_model("cnn_medium", 10, 1)
    teacher.stages[1].relu = nn.ReLU(inplace=True)
    term = _FeatMSE(_FeatParams(method="feat", name="feat", teacher=["stages.1.bn"]))
    with pytest.raises(TapError, match="modified in place"):
        Distiller(create_model("cnn_small", 10, 1), teacher, [term], example_input=x)


def test_step_seeding_matches_torch_manual_seed() -> None:
    torch.manual_seed(1234)
    a = torch.rand(5)
    seed_step(1234, torch.device("cpu"))
    b = torch.rand(5)
    assert torch.equal(a, b)


def _kd_recipe(**train: object) -> dict:
    return {
        "name": "kd",
        "data": {"name": "digits", "per_class": 20},
        "student": {"name": "cnn_small"},
        "teacher": {"name": "cnn_medium"},
        "distill": {"terms": [{"method": "ce", "weight": 0.1}, {"method": "kd", "weight": 0.9}]},
        "train": {"epochs": 2, "device": "cpu", "progress": False, **train},
    }


def test_cache_teacher_gives_the_same_run(tmp_path) -> None:  # noqa: ANN001
    plain = train(load_config(_kd_recipe()), run_dir=tmp_path / "a")
    cached = train(load_config(_kd_recipe(cache_teacher=True)), run_dir=tmp_path / "b")
    assert plain.test_acc_last == cached.test_acc_last
    losses = [r["train_loss"] for r in plain.history]
    assert losses == [r["train_loss"] for r in cached.history]


def test_cache_teacher_refuses_augmentation(tmp_path) -> None:  # noqa: ANN001
    recipe = _kd_recipe(cache_teacher=True)
    recipe["data"]["augment"] = {"hflip": True}
    with pytest.raises(ConfigError, match="train.cache_teacher.*hflip=True"):
        train(load_config(recipe), run_dir=tmp_path / "c")
