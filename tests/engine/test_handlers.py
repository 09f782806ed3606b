"""Handlers on the engine's events: NaN guard, progress, timing, the epoch's row, the
lr column, state that travels in checkpoints."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from ignite.engine import Engine, Events
from pydantic import Field
from torch import Tensor

from kdlab.config import load_recipe
from kdlab.engine import Trainer, train
from kdlab.engine.handlers import Handler, ProgressBar, ReportProgress, StageRun, Timing
from kdlab.engine.optim import build_optimizer
from kdlab.engine.stages import trainable_parameters
from kdlab.engine.step import make_step
from kdlab.errors import NumericalError
from kdlab.methods import StepContext, Term, TermParams
from kdlab.rundir import RunDir


class _NaNAtParams(TermParams):
    at: int = Field(3, description="the iteration whose loss is NaN")


class _NaNAt(Term):
    """Cross-entropy that turns NaN at one iteration (registered for these tests)."""

    method = "_test_nan_in_step"
    Params = _NaNAtParams
    needs_teacher = False

    def forward(self, ctx: StepContext) -> Tensor:
        loss = torch.nn.functional.cross_entropy(ctx.student.logits, ctx.targets)
        return loss * float("nan") if ctx.iteration == self.params.at else loss


def _recipe(tmp: Path, *over: str) -> Any:
    data = {
        "name": "h",
        "output_dir": str(tmp),
        "student": {"name": "cnn_tiny"},
        "data": {"per_class": 10, "batch_size": 20},  # 100 training images: 5 steps an epoch
        "train": {"epochs": 2, "progress": False, "threads": 1, "precision": "fp32"},
    }
    return load_recipe(data, list(over))


def test_nan_is_caught_at_the_log_interval(tmp_path: Path) -> None:
    # No checkpoint before the epoch's end: the interval check (every 2 steps) stops the
    # run at iteration 4, inside the first epoch, before anything is logged or saved.
    cfg = _recipe(
        tmp_path, "distill.terms=[{method: _test_nan_in_step, at: 3}]", "train.log_every=2"
    )
    seen: list[int] = []
    match = r"epoch 1: loss '_test_nan_in_step' is not finite \(first at iteration 3\)"
    with pytest.raises(NumericalError, match=match):
        train(cfg, handlers=[ReportProgress(lambda s, it, n: seen.append(it))])
    assert seen == [1, 2, 3]  # the check at 4 ran before the progress report of step 4
    rd = RunDir(tmp_path / "h")
    assert rd.read_metrics() == [] and not list(rd.checkpoints.glob("step-*"))


def test_report_progress_replaces_the_bar_and_sees_every_step(tmp_path: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    cfg = _recipe(tmp_path, "train.progress=true")
    trainer = Trainer(cfg, handlers=[ReportProgress(lambda *a: seen.append(a))])
    assert not any(isinstance(h, ProgressBar) for h in trainer.handlers)
    trainer.run()
    assert seen == [("main", i, 10) for i in range(1, 11)]
    assert any(isinstance(h, ProgressBar) for h in Trainer(cfg).handlers)


class _Rows(Handler):
    """A user handler: sees the epoch's row (its evaluator ran before it) and keeps a
    count in checkpoints."""

    name = "rows"

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.epochs = 0

    def attach(self, engine: Engine, run: StageRun) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._row)

    def _row(self, engine: Engine) -> None:
        self.epochs += 1
        self.rows.append(dict(engine.state.metrics))

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs = state["epochs"]


def test_user_handlers_see_the_row_and_their_state_is_resumed(tmp_path: Path) -> None:
    first = _Rows()
    res = train(_recipe(tmp_path, "train.epochs=1"), handlers=[first])
    assert first.rows == RunDir(res.run_dir).read_metrics()
    assert "val_acc1" in first.rows[0]
    again = _Rows()
    train(_recipe(tmp_path), resume=True, handlers=[again])  # one more epoch
    assert again.epochs == 2 and len(again.rows) == 1


def test_lr_column_is_the_lr_the_epoch_trained_with(tmp_path: Path) -> None:
    cfg = _recipe(
        tmp_path,
        "train.optimizer.lr=0.1",
        "train.schedule.name=multistep",
        "train.schedule.milestones=[1]",
    )
    rows = RunDir(train(cfg).run_dir).read_metrics()
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.01])


def test_timing_records_every_step(tmp_path: Path) -> None:
    calls: list[int] = []
    timing = Timing(between=lambda: calls.append(1))
    train(_recipe(tmp_path), handlers=[timing])
    assert [it for _, it, _ in timing.records] == list(range(1, 11))
    assert len(calls) == 10 and all(s > 0 and math.isfinite(s) for s in timing.seconds("main"))


def test_the_step_never_waits_for_the_device(tmp_path: Path, monkeypatch: Any) -> None:
    # Reading a tensor's value on the host (bool, float, int, item, tolist) is a device
    # sync on accelerators: the step itself does none, gradient clipping included.
    cfg = _recipe(
        tmp_path, "teacher={name: cnn_tiny}", "distill.terms=[{method: ce}, {method: kd}]"
    )
    trainer = Trainer(cfg)
    stage = trainer.stages[-1]
    params = trainable_parameters(trainer.distiller, stage)
    step = make_step(
        trainer.distiller,
        trainer.distiller,
        build_optimizer(params, stage.optimizer),
        params,
        stage,
        stage_index=0,
        seed=0,
        rank=0,
        precision=trainer.precision,
        channels_last=trainer.channels_last,
        grad_clip=1.0,
    )
    engine = Engine(step)
    engine.state.iteration, engine.state.epoch = 1, 1
    batch = next(iter(trainer.train_loader))
    for name in ("__bool__", "__float__", "__int__", "item", "tolist"):
        monkeypatch.setattr(
            torch.Tensor, name, lambda *a, _n=name, **k: pytest.fail(f"step called {_n}")
        )
    out = step(engine, batch)
    monkeypatch.undo()
    assert out.n == 20 and out.finite.shape == (4,) and bool(out.finite.all())
    assert set(out.losses) == {"ce", "kd"}
