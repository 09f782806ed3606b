"""Handlers: behaviour attached to each stage's Ignite ``Engine``.

A :class:`Handler` gets every stage's engine and a :class:`StageRun` (the trainer, the
stage, its optimiser, scheduler and loader) in :meth:`Handler.attach`, and registers
callbacks on Ignite's events there. A stateful handler names itself (``name``) and
implements ``state_dict`` / ``load_state_dict``: its state then travels in every
checkpoint and is restored on resume.

The trainer attaches its own handlers in this order, so a user's handlers
(``train(..., handlers=[...])``) see their results: :class:`NanGuard`,
:class:`EpochMetrics` (``engine.state.metrics`` holds the epoch's row once it has
run), :class:`BestSelector`, :class:`RunLog`, :class:`ProgressBar` (unless a
:class:`ReportProgress` is given), the user's handlers, and last :class:`Checkpointer`,
which saves every stateful handler's state as it is after the event.

Which are Ignite's own: the progress bar is Ignite's ``ProgressBar``; the evaluators
count with Ignite's metrics. Checkpoints, best-epoch selection and the NaN guard are
kdlab's: Ignite's ``Checkpoint`` saves with ``torch.save`` (kdlab keeps weights in
safetensors and hashes every file, and must restore handler state bit-exactly), and
``TerminateOnNan`` reads the loss on the host after every step (a device sync that
kdlab's step avoids).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from ignite.engine import Engine, Events
from torch import Tensor

from kdlab.engine import distributed as dist
from kdlab.engine.stages import Stage
from kdlab.engine.step import Precision, StepOutput
from kdlab.errors import NumericalError

if TYPE_CHECKING:
    from kdlab.config import RunConfig
    from kdlab.distiller import Distiller
    from kdlab.engine.evaluators import Evaluator
    from kdlab.engine.runner import Trainer
    from kdlab.rundir import RunDir


@dataclass
class StageRun:
    """What handlers see of the stage being trained."""

    trainer: Trainer
    stage: Stage
    index: int  # the stage's position in the run
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: Any
    precision: Precision
    handlers: list[Handler] = field(default_factory=list)

    @property
    def cfg(self) -> RunConfig:
        return self.trainer.cfg

    @property
    def run_dir(self) -> RunDir:
        return self.trainer.run_dir

    @property
    def distiller(self) -> Distiller:
        return self.trainer.distiller

    @property
    def is_main(self) -> bool:
        """Rank 0, the process that writes the run folder."""
        return self.trainer.rank == 0

    @property
    def total(self) -> int:
        """Iterations in the stage."""
        return self.stage.epochs * len(self.loader)

    def where(self, engine: Engine) -> str:
        return (
            f"stage {self.stage.name!r}, epoch {engine.state.epoch}, "
            f"iteration {engine.state.iteration}"
        )


class Handler:
    """Base class of the handlers passed to :func:`kdlab.engine.train`."""

    name: ClassVar[str] = ""  # key of the handler's state in checkpoints (stateful ones)

    def attach(self, engine: Engine, run: StageRun) -> None:
        """Register callbacks on ``engine`` (called once per stage)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any] | None:
        """State to checkpoint, or None for a stateless handler."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, when resuming inside the stage."""


# ---------------------------------------------------------------- the trainer's own


class NanGuard(Handler):
    """Stops the run at the first non-finite loss or gradient norm, without syncing
    every step: the first bad step's flags and iteration are kept on the device and
    checked every ``train.log_every`` iterations, at every epoch end and before every
    checkpoint (so a non-finite step never reaches one; the last good checkpoint is
    kept). The error names what that first bad step flagged (later steps fail too
    once the weights are NaN)."""

    def attach(self, engine: Engine, run: StageRun) -> None:
        self.run = run
        self.bad: Tensor | None = None
        self.first: Tensor | None = None
        self.labels: list[str] = []
        every = run.cfg.train.log_every
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._fold)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=every), self.check)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.check)

    def _fold(self, engine: Engine) -> None:
        out: StepOutput = engine.state.output
        bad = ~out.finite
        if self.bad is None or self.bad.shape != bad.shape:
            self.labels = ["total", *out.losses, "gradient norm"][: bad.numel()]
            self.bad = torch.zeros_like(bad)  # what the first bad step flagged: the culprit
            self.first = torch.full((), -1, dtype=torch.long, device=bad.device)
        assert self.first is not None
        now = (self.first < 0) & bad.any()
        self.first = torch.where(now, engine.state.iteration, self.first)
        self.bad = torch.where(now, bad, self.bad)

    def check(self, engine: Engine) -> None:
        """Raise NumericalError if any step since the start of the stage was not finite."""
        if self.bad is None or self.first is None:
            return
        count = dist.reduce_sums({"bad": self.bad.any().to(torch.float64)})["bad"]
        if not bool(count > 0):
            return
        flags = dict(zip(self.labels, self.bad.tolist()))
        parts = [f"loss {n!r}" for n in self.labels[1:] if flags[n] and n != "gradient norm"]
        if flags.get("gradient norm"):
            parts.append("the gradient norm")
        if not parts:
            parts.append("the total loss")
        first = int(self.first)
        at = f"iteration {first}" if first > 0 else "another rank's step"
        raise NumericalError(
            f"stage {self.run.stage.name!r}, epoch {engine.state.epoch}: {', '.join(parts)} "
            f"{'is' if len(parts) == 1 else 'are'} not finite (first at {at}); the last good "
            "checkpoint is kept (lower the learning rate or set train.grad_clip)"
        )


class EpochMetrics(Handler):
    """Sums the step outputs on the device, reduces them over ranks at the epoch's end,
    scores the validation split with the run's evaluator and leaves the epoch's row in
    ``engine.state.metrics``: ``stage``, ``epoch``, ``lr`` (the epoch's), ``train_<loss>``
    (mean per batch), ``train_loss``, ``train_acc`` (percent), ``val_<metric>``, ``time``.
    """

    name = "train_sums"

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator
        self.sums: Tensor | None = None
        self.keys: list[str] = []
        self.pending: dict[str, Any] | None = None

    def attach(self, engine: Engine, run: StageRun) -> None:
        self.run = run
        self.sums, self.keys = None, []
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._add)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._finish)

    def _start(self, engine: Engine) -> None:
        self.lr = self.run.optimizer.param_groups[0]["lr"]
        self.sums, self.keys = None, []
        if self.pending:  # resumed mid-epoch: the sums of the steps before the checkpoint
            self.keys = list(self.pending["keys"])
            self.sums = self.pending["sums"].to(self.run.precision.device)
        self.pending = None

    def _add(self, engine: Engine) -> None:
        out: StepOutput = engine.state.output
        values = [out.total, *out.losses.values(), out.correct]
        vec = torch.stack([v.float().reshape(()) for v in values] + [values[0].new_tensor(out.n)])
        if self.sums is None:
            self.keys = ["loss", *out.losses, "correct", "n"]
            self.sums = vec
        else:
            self.sums = self.sums + vec

    def _finish(self, engine: Engine) -> None:
        run = self.run
        sums = dict(zip(self.keys, self.sums if self.sums is not None else []))
        sums = dist.reduce_sums(sums)
        batches = max(len(run.loader), 1) * dist.world_size()
        row: dict[str, Any] = {"stage": run.stage.name, "epoch": engine.state.epoch, "lr": self.lr}
        for k, v in sums.items():
            if k not in ("correct", "n"):
                row[f"train_{k}"] = float(v) / batches
        if "n" in sums:
            row["train_acc"] = 100.0 * float(sums["correct"]) / max(float(sums["n"]), 1.0)
        val = run.trainer.val_loader
        if val is not None:
            scores = self.evaluator.evaluate(run.distiller.student, val)
            row.update({f"val_{k}": v for k, v in scores.items()})
        row["time"] = time.time()
        engine.state.metrics = row
        self.sums, self.keys = None, []  # the epoch is complete: nothing to carry over

    def state_dict(self) -> dict[str, Any] | None:
        if self.sums is None:
            return {}
        return {"keys": list(self.keys), "sums": self.sums.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = state if state and "sums" in state else None


class BestSelector(Handler):
    """Keeps the main stage's best epoch on a validation metric (``train.select``) and
    its student weights (``best.safetensors``)."""

    name = "best"

    def __init__(self, metric: str, mode: str) -> None:
        self.metric, self.mode = metric, mode
        self.score: float | None = None
        self.epoch = 0

    def attach(self, engine: Engine, run: StageRun) -> None:
        self.run = run
        if run.stage.is_main and run.trainer.val_loader is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._update)

    def better(self, score: float) -> bool:
        if self.score is None:
            return True
        return score > self.score if self.mode == "max" else score < self.score

    def _update(self, engine: Engine) -> None:
        score = float(engine.state.metrics[f"val_{self.metric}"])
        if self.better(score):
            self.score, self.epoch = score, engine.state.epoch
            if self.run.is_main:
                self.run.run_dir.save_weights("best", self.run.distiller.student.state_dict())

    def state_dict(self) -> dict[str, Any] | None:
        return {"score": self.score, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.score, self.epoch = state.get("score"), int(state.get("epoch", 0))


class RunLog(Handler):
    """Appends each epoch's row to the run's history and (rank 0) to ``metrics.jsonl``."""

    def attach(self, engine: Engine, run: StageRun) -> None:
        self.run = run
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._log)

    def _log(self, engine: Engine) -> None:
        row = dict(engine.state.metrics)
        self.run.trainer.history.append(row)
        if self.run.is_main:
            self.run.run_dir.append_metrics(row)


class Checkpointer(Handler):
    """Writes a resumable checkpoint at every epoch's end and every
    ``train.checkpoint_every`` iterations: weights (safetensors), optimiser, scheduler,
    scaler and every stateful handler's state, with hashes (see ``engine.checkpoint``).

    Nothing non-finite is saved: the NaN guard checks the steps since its last check
    and every weight is checked; a checkpoint at a stage's last iteration also writes
    the next stage's starting point.
    """

    def __init__(self, guard: NanGuard) -> None:
        self.guard = guard

    def attach(self, engine: Engine, run: StageRun) -> None:
        self.run = run
        every = run.cfg.train.checkpoint_every
        if every:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=every), self._mid_epoch)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def _mid_epoch(self, engine: Engine) -> None:
        if engine.state.iteration % len(self.run.loader):  # epoch ends save anyway
            self.save(engine)

    def save(self, engine: Engine) -> None:
        run = self.run
        self.guard.check(engine)
        weights = run.distiller.state_dict()
        # A finite loss can still leave non-finite weights (an overflowing gradient).
        # Every rank checks (their weights are equal), so all stop together.
        for name, value in weights.items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise NumericalError(
                    f"{run.where(engine)}: weight {name!r} is not finite; not checkpointed, "
                    "the last good checkpoint is kept (lower the learning rate or set "
                    "train.grad_clip)"
                )
        if not run.is_main:
            return
        handlers = {h.name: h.state_dict() for h in run.handlers if h.name}
        state = {
            "stage_index": run.index,
            "stage": run.stage.name,
            "iteration": engine.state.iteration,
            "epoch": engine.state.epoch,
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.precision.state_dict(),
            "handlers": {k: v for k, v in handlers.items() if v is not None},
            "elapsed": run.trainer.elapsed(),
        }
        step = run.index * 10_000_000 + engine.state.iteration
        run.run_dir.save_checkpoint(step, weights, state)
        # The next stage starts from this one's final weights: mark it done, only when
        # the stage's last iteration is done (a mid-epoch checkpoint of the last epoch
        # also has epoch == epochs; marking the stage done there skipped its rest).
        stages = run.trainer.stages
        if engine.state.iteration >= run.total and run.index + 1 < len(stages):
            nxt = {**state, "stage_index": run.index + 1, "stage": stages[run.index + 1].name}
            nxt.update(iteration=0, epoch=0, fresh_stage=True, handlers={})
            run.run_dir.save_checkpoint(step + 1, weights, nxt)


class ProgressBar(Handler):
    """Ignite's tqdm progress bar, one per epoch (rank 0 only)."""

    def attach(self, engine: Engine, run: StageRun) -> None:
        if not run.is_main:
            return
        from ignite.handlers import ProgressBar as IgniteBar  # noqa: PLC0415

        bar = IgniteBar(persist=False, desc=f"{run.cfg.name}:{run.stage.name}", leave=False)
        bar.attach(engine)


# ---------------------------------------------------------------- for callers


class ReportProgress(Handler):
    """Calls ``fn(stage, iteration, total)`` after every step on rank 0 (replaces the
    progress bar; a driver such as bench shows its own)."""

    def __init__(self, fn: Callable[[str, int, int], None]) -> None:
        self.fn = fn

    def attach(self, engine: Engine, run: StageRun) -> None:
        if not run.is_main:
            return
        name, total = run.stage.name, run.total
        engine.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: self.fn(name, e.state.iteration, total)
        )


class Timing(Handler):
    """Records the time between consecutive steps (everything a run does per step:
    loader, step, handlers attached before this one) as ``(stage, iteration, seconds)``.

    ``between`` runs after each record and is not counted: e.g. a baseline measured at
    the same moment as the step it is compared with.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.perf_counter,
        between: Callable[[], None] | None = None,
    ) -> None:
        self.clock = clock
        self.between = between
        self.records: list[tuple[str, int, float]] = []

    def attach(self, engine: Engine, run: StageRun) -> None:
        name = run.stage.name
        last = [self.clock()]

        def record(e: Engine) -> None:
            now = self.clock()
            self.records.append((name, e.state.iteration, now - last[0]))
            if self.between is not None:
                self.between()
            last[0] = self.clock()

        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: last.__setitem__(0, self.clock()))
        engine.add_event_handler(Events.ITERATION_COMPLETED, record)

    def seconds(self, stage: str | None = None) -> list[float]:
        return [s for name, _, s in self.records if stage is None or name == stage]
