"""Numerical faults: a non-finite loss or weight stops the run (at the next check: every
``train.log_every`` steps, epoch end, checkpoint), naming the term and the first bad
step, and the last good checkpoint stays loadable; gradient clipping bounds the norm."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from kdlab.config import load_config
from kdlab.data import build_dataset
from kdlab.engine import checkpoint as ckpt
from kdlab.engine import train
from kdlab.engine.runner import Trainer
from kdlab.errors import NumericalError
from kdlab.functional import cross_entropy
from kdlab.methods import StepContext, Term, TermParams


class FaultParams(TermParams):
    at: int = 3


class NaNAtStep(Term):
    """Cross-entropy, except NaN at iteration ``at``."""

    method = "_test_nan_at"
    Params = FaultParams
    needs_teacher = False

    def forward(self, ctx: StepContext) -> Tensor:
        loss = cross_entropy(ctx.student.logits, ctx.targets)
        return loss * float("nan") if ctx.iteration == self.params.at else loss


class NaNGradAtStep(Term):
    """A finite loss whose gradient is NaN at iteration ``at`` (sqrt at 0)."""

    method = "_test_nan_grad_at"
    Params = FaultParams
    needs_teacher = False

    def forward(self, ctx: StepContext) -> Tensor:
        loss = cross_entropy(ctx.student.logits, ctx.targets)
        if ctx.iteration == self.params.at:
            loss = loss + torch.sqrt(0.0 * ctx.student.logits.sum())  # value 0, grad NaN
        return loss


class LogitEnergy(Term):
    """``scale * mean(z^2)``: a loss with a huge gradient."""

    method = "_test_logit_energy"
    needs_teacher = False

    def forward(self, ctx: StepContext) -> Tensor:
        return 1e4 * ctx.student.logits.pow(2).mean()


RECIPE: dict[str, Any] = {
    "name": "numerics",
    "data": {"name": "digits", "batch_size": 32, "per_class": 16},  # 5 batches an epoch
    "student": {"name": "cnn_tiny"},
    "train": {
        "epochs": 2,
        "checkpoint_every": 3,
        "progress": False,
        "optimizer": {"lr": 0.1},
        "schedule": {"name": "constant"},
    },
}


@pytest.fixture(scope="module")
def bundle():  # noqa: ANN201
    return build_dataset(load_config(RECIPE).data)


def _cfg(**changes: Any) -> Any:
    recipe = copy.deepcopy(RECIPE)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = recipe
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return load_config(recipe)


def test_nan_loss_names_term_and_step_and_keeps_last_good_checkpoint(
    tmp_path: Path, bundle: Any
) -> None:
    cfg = _cfg(distill__terms=[{"method": "ce"}, {"method": "_test_nan_at", "at": 7}])
    with pytest.raises(NumericalError) as info:
        train(cfg, run_dir=tmp_path, bundle=bundle)
    msg = str(info.value)
    assert "'_test_nan_at'" in msg and "'ce'" not in msg  # the culprit, not the healthy term
    assert "loss '_test_nan_at' is not finite (first at iteration 7)" in msg and "epoch 2" in msg
    # Checkpoints at 3, 5 (epoch end) and 6 were written; the one at 9 was refused.
    loaded = ckpt.load_latest_checkpoint(tmp_path / "checkpoints", warn=pytest.fail)
    assert loaded is not None
    weights, state = loaded
    assert state["iteration"] == 6
    assert all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point())
    assert not (tmp_path / "results.json").exists()


def test_finite_loss_with_nan_gradient_is_not_checkpointed(tmp_path: Path, bundle: Any) -> None:
    cfg = _cfg(distill__terms=[{"method": "_test_nan_grad_at", "at": 4}], train__checkpoint_every=1)
    with pytest.raises(NumericalError, match=r"iteration 4: weight '.*' is not finite"):
        train(cfg, run_dir=tmp_path, bundle=bundle)
    _, state = ckpt.load_latest_checkpoint(tmp_path / "checkpoints", warn=pytest.fail)
    assert state["iteration"] == 3


def test_nan_gradient_with_clipping_is_named_and_never_checkpointed(
    tmp_path: Path, bundle: Any
) -> None:
    cfg = _cfg(distill__terms=[{"method": "_test_nan_grad_at", "at": 4}], train__grad_clip=1.0)
    match = r"epoch 1: the gradient norm is not finite \(first at iteration 4\)"
    with pytest.raises(NumericalError, match=match):
        train(cfg, run_dir=tmp_path, bundle=bundle)
    _, state = ckpt.load_latest_checkpoint(tmp_path / "checkpoints", warn=pytest.fail)
    assert state["iteration"] == 3


def test_huge_learning_rate_stops_with_a_named_term(tmp_path: Path, bundle: Any) -> None:
    cfg = _cfg(train__optimizer={"lr": 1e12, "momentum": 0.0}, train__checkpoint_every=None)
    with pytest.raises(NumericalError, match=r"loss 'ce' is not finite|weight '.*' is not finite"):
        train(cfg, run_dir=tmp_path, bundle=bundle)


def _step_norm(bundle: Any, tmp_path: Path, clip: float | None) -> float:
    """The norm of one SGD step (lr 1, no momentum/decay) = the applied gradient's norm."""
    cfg = _cfg(
        data={"name": "digits", "batch_size": 64, "per_class": 3},  # 30 images: one batch
        distill={"terms": [{"method": "_test_logit_energy"}]},
        train={
            "epochs": 1,
            "grad_clip": clip,
            "progress": False,
            "optimizer": {"lr": 1.0, "momentum": 0.0, "weight_decay": 0.0},
            "schedule": {"name": "constant"},
        },
    )
    trainer = Trainer(cfg, run_dir=tmp_path / str(clip), bundle=bundle)
    student = trainer.distiller.student
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    trainer.run()
    after = {n: p.detach() for n, p in student.named_parameters()}
    assert len(trainer.history) == 1
    return math.sqrt(sum(float((after[n] - b).pow(2).sum()) for n, b in before.items()))


def test_grad_clip_bounds_the_global_norm(tmp_path: Path) -> None:
    bundle_small = build_dataset(_cfg(data={"name": "digits", "per_class": 3}).data)
    free = _step_norm(bundle_small, tmp_path, None)
    assert free > 1.0  # the loss really has a large gradient
    for clip in (0.5, 0.01):
        assert _step_norm(bundle_small, tmp_path, clip) == pytest.approx(clip, rel=1e-3)
