"""Training runs on PyTorch Ignite: the one training loop of kdlab.

``train(recipe)`` builds data, models and the Distiller from a recipe, runs each stage
(the methods' pre-stages, then the main stage) as an Ignite ``Engine`` whose process
function comes from :func:`kdlab.engine.step.make_step`, and attaches handlers to it
(:mod:`kdlab.engine.handlers`): the NaN guard, the epoch's metrics and validation
score (an evaluator from :mod:`kdlab.engine.evaluators`), best-epoch selection on
``train.select``, the run log, checkpoints, progress, and whatever the caller adds
(a tuner's pruning, a benchmark's timing). The test split is scored at the end, for
the selected epoch and the last one. The run folder (:class:`~kdlab.rundir.RunDir`)
keeps the resolved recipe, the environment, per-epoch metrics, checkpoints and weights.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import Tensor, nn

from kdlab.config import RunConfig
from kdlab.data import DataBundle, build_dataset, make_loader
from kdlab.data.base import check_bundle
from kdlab.distiller import Distiller
from kdlab.engine import checkpoint as ckpt
from kdlab.engine import distributed as dist
from kdlab.engine.env import environment, resolve_device
from kdlab.engine.evaluators import Evaluator, build_evaluator, selection
from kdlab.engine.handlers import (
    BestSelector,
    Checkpointer,
    EpochMetrics,
    Handler,
    NanGuard,
    ProgressBar,
    ReportProgress,
    RunLog,
    StageRun,
)
from kdlab.engine.optim import build_optimizer, build_scheduler
from kdlab.engine.stages import MAIN, Stage, resolve_stages, trainable_parameters
from kdlab.engine.step import Precision, make_step, wants_channels_last
from kdlab.errors import CheckpointError, ConfigError
from kdlab.methods import build_terms
from kdlab.models import count_parameters, create_model
from kdlab.rundir import RunDir
from kdlab.views import build_views
from kdlab.views.augment import augment


@dataclass
class RunResult:
    """What a finished run reports (also written to ``results.json``).

    ``select`` is the validation metric that chose ``best_epoch`` (``mode`` max or
    min); ``*_best`` are the metrics of the selected epoch's weights (the last epoch's
    without a validation split), ``*_last`` those of the last epoch's.
    """

    run_dir: str
    selection: str  # "best-val" or "last" (no validation split)
    evaluator: str
    select: str
    mode: str
    best_epoch: int
    val_best: dict[str, float] | None
    test_best: dict[str, float]
    test_last: dict[str, float]
    params: int
    wall_time_s: float
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def val_score(self) -> float | None:
        """The selection metric on validation at the selected epoch."""
        return None if self.val_best is None else self.val_best.get(self.select)

    @property
    def test_score_best(self) -> float:
        return self.test_best[self.select]

    @property
    def test_score_last(self) -> float:
        return self.test_last[self.select]

    # the accuracy evaluator's numbers under the names the first reports used
    @property
    def val_acc(self) -> float | None:
        return None if self.val_best is None else self.val_best.get("acc1")

    @property
    def test_acc_best(self) -> float:
        return self.test_best["acc1"]

    @property
    def test_acc_last(self) -> float:
        return self.test_last["acc1"]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("history")
        d.update(
            val_score=self.val_score,
            test_score_best=self.test_score_best,
            test_score_last=self.test_score_last,
        )
        if "acc1" in self.test_best:  # flat keys read by tables written before evaluators
            d.update(
                val_acc=self.val_acc,
                test_acc_best=self.test_acc_best,
                test_acc_last=self.test_acc_last,
            )
            if "acc5" in self.test_best:
                d.update(
                    test_acc5_best=self.test_best["acc5"], test_acc5_last=self.test_last["acc5"]
                )
        return d


def load_model(
    name: str,
    kwargs: dict[str, Any],
    checkpoint: str | None,
    num_classes: int,
    in_channels: int,
    output: int | str | None = None,
) -> nn.Module:
    """A model from the registry, with weights from a run folder or safetensors file;
    ``output`` picks its logits from a tuple / dict output (``student.output``)."""
    model = create_model(name, num_classes, in_channels, output=output, **kwargs)
    if checkpoint is None:
        return model
    path = Path(checkpoint)
    if path.is_dir():
        path = RunDir(path).weights_path("model")
    state = ckpt.load_weights(path)
    missing, unexpected = _compare_keys(model.state_dict(), state)
    if missing or unexpected:
        raise CheckpointError(
            f"weights {str(path)!r} do not fit model {name!r}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} (is it the same architecture and class count?)"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # same names, other shapes: e.g. another class count
        detail = "; ".join(line.strip() for line in str(err).splitlines()[1:]) or str(err)
        raise CheckpointError(
            f"weights {str(path)!r} do not fit model {name!r} with {num_classes} classes and "
            f"{in_channels} input channels: {detail}"
        ) from None
    return model


def _compare_keys(expected: dict[str, Tensor], got: dict[str, Tensor]) -> tuple[list, list]:
    return sorted(set(expected) - set(got)), sorted(set(got) - set(expected))


def _enable_teacher_cache(cfg: RunConfig, distiller: Distiller, num_samples: int) -> None:
    aug = cfg.data.augment
    if aug.crop_padding or aug.hflip:
        raise ConfigError(
            "train.cache_teacher reuses the teacher's outputs for each sample, which is exact "
            "only when the teacher sees the same input every epoch; data.augment "
            f"(crop_padding={aug.crop_padding}, hflip={aug.hflip}) changes it: turn one off"
        )
    views = sorted(
        {t.params.teacher_view for t in distiller.terms.values() if t.needs_teacher} - {"default"}
    )
    if views:
        warnings.warn(
            f"train.cache_teacher: teacher view(s) {views} change the input each step and "
            "are computed every step; only the default view is cached",
            stacklevel=3,
        )
    distiller.enable_teacher_cache(num_samples)


class Trainer:
    """Builds everything a recipe names and runs its stages.

    Args:
        cfg: a recipe from :func:`kdlab.config.load_recipe`.
        run_dir: the run folder (default ``output_dir/name``).
        bundle: an already built dataset (skips ``build_dataset``).
        evaluator: scores validation and test (default: the recipe's ``train.evaluator``).
        handlers: attached to every stage after the trainer's own (see
            :mod:`kdlab.engine.handlers`).
    """

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path | RunDir | None = None,
        *,
        bundle: DataBundle | None = None,
        evaluator: Evaluator | None = None,
        handlers: Sequence[Handler] = (),
    ) -> None:
        self.cfg = cfg
        self.rank, self.world_size = dist.rank(), dist.world_size()
        self.run_dir = RunDir(run_dir) if run_dir is not None else RunDir.of(cfg)
        tcfg = cfg.train
        if tcfg.threads:
            torch.set_num_threads(tcfg.threads)
        self.device = dist.local_device(resolve_device(tcfg.device))
        self.precision = Precision(tcfg.precision, self.device)
        self.evaluator = evaluator or build_evaluator(tcfg.evaluator)
        self.select, self.mode = selection(tcfg, self.evaluator)
        guard = NanGuard()
        self.best = BestSelector(self.select, self.mode)
        self.handlers: list[Handler] = [guard, EpochMetrics(self.evaluator), self.best, RunLog()]
        if tcfg.progress and not any(isinstance(h, ReportProgress) for h in handlers):
            self.handlers.append(ProgressBar())
        # the checkpoint comes last: it saves every handler's state after its update
        self.handlers += [*handlers, Checkpointer(guard)]
        torch.manual_seed(cfg.seed)
        self.data = bundle if bundle is not None else build_dataset(cfg.data)
        d = self.data
        # Labels out of range or NaN inputs would otherwise surface as an IndexError
        # deep inside a loss (or as a NaN loss) many steps later: check them up front.
        check_bundle(d, cfg.data.name)
        student = load_model(
            cfg.student.name,
            cfg.student.kwargs,
            cfg.student.checkpoint,
            d.num_classes,
            d.in_channels,
            cfg.student.output,
        )
        teacher = None
        if cfg.teacher is not None:
            teacher = load_model(
                cfg.teacher.name,
                cfg.teacher.kwargs,
                cfg.teacher.checkpoint,
                d.num_classes,
                d.in_channels,
                cfg.teacher.output,
            )
        terms = build_terms(cfg.distill.terms)
        for term in terms:  # terms that index the training set (CRD's memory bank)
            term.bind_data(len(d.train), labels=d.train.y)
        example = d.train.example(2)
        self.distiller = Distiller(
            student, teacher, terms, build_views(cfg.distill.views), example_input=example
        ).to(self.device)
        self.channels_last = wants_channels_last(tcfg.channels_last, student, example)
        if self.channels_last:
            self.distiller.to(memory_format=torch.channels_last)
        if tcfg.cache_teacher and teacher is not None:
            _enable_teacher_cache(cfg, self.distiller, len(d.train))
        if tcfg.compile:
            self._compile(student, teacher)
        self.stages = resolve_stages(cfg, self.distiller)
        self.train_loader = make_loader(
            d.train,
            dist.per_rank_batch(cfg.data.batch_size),
            train=True,
            seed=cfg.seed,
            rank=self.rank,
            world_size=self.world_size,
            device=self.device,
        )
        self.val_loader = self._eval_loader(d.val)
        self.history: list[dict[str, Any]] = []
        self._started = time.time()

    def _eval_loader(self, split: Any) -> Any:
        if split is None:
            return None
        return make_loader(
            split,
            self.cfg.data.eval_batch_size,
            train=False,
            seed=self.cfg.seed,
            rank=self.rank,
            world_size=self.world_size,
            device=self.device,
        )

    def _compile(self, student: nn.Module, teacher: nn.Module | None) -> None:
        # In place (Module.compile): parameter names and checkpoints are unchanged. A
        # compiled model's submodule hooks capture nothing (measured, torch 2.13), so a
        # model with taps stays eager.
        tapped = self.distiller.teacher_taps
        for role, model, taps in (
            ("student", student, self.distiller.student_taps.taps),
            ("teacher", teacher, tapped.taps if tapped is not None else []),
        ):
            if model is None:
                continue
            if taps:
                warnings.warn(
                    f"train.compile: the {role} has taps ({', '.join(map(str, taps))}), "
                    "which compiled models do not fill; it runs eagerly",
                    stacklevel=3,
                )
            else:
                model.compile()

    def elapsed(self) -> float:
        """Seconds of training so far, over every attempt of a resumed run."""
        return time.time() - self._started

    # ------------------------------------------------------------------ running
    def run(self, resume: bool = False, overwrite: bool = False) -> RunResult:
        """Train every stage; ``resume`` continues from the newest good checkpoint.

        The run folder is locked for the run; a fresh run refuses a folder that holds
        a run unless ``overwrite``, a resume refuses a changed recipe, and nothing in
        the folder changes before those checks (and the checkpoint's) pass.
        """
        main = self.rank == 0  # only rank 0 writes the run folder
        session = self.run_dir.session(self.cfg, resume, overwrite) if main else None
        with session or contextlib.nullcontext():
            dist.barrier()
            return self._run(resume)

    def _run(self, resume: bool) -> RunResult:
        rd = self.run_dir
        state = self._resume_state() if resume else None
        self._started = time.time() - (state or {}).get("elapsed", 0.0)
        if state is not None:
            # Rows of epochs after the checkpoint were written by the killed run and
            # will be written again by the replay: keep only those the checkpoint
            # covers (this also drops a last line cut by the kill), so each
            # (stage, epoch) appears exactly once.
            self.history = self._rows_before(state, rd.read_metrics())
        if self.rank == 0:
            if state is None:
                # A fresh start (also --resume with no checkpoint yet: a run killed before
                # its first one) must not keep what an earlier attempt left behind.
                rd.clear()
            else:
                rd.write_metrics(self.history)
            rd.write_config(self.cfg)
            env = {**environment(self.device), "world_size": self.world_size}
            env["precision"], env["channels_last"] = self.precision.name, self.channels_last
            rd.write_env(env)
        first = state["stage_index"] if state else 0
        for i, stage in enumerate(self.stages):
            if i < first:
                continue
            fresh = state is None or i != first or state.get("fresh_stage", False)
            self.run_stage(i, stage, None if fresh else state)
        return self._finish()

    def _rows_before(self, state: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict]:
        """The metrics rows of epochs a checkpoint state has completed."""
        index = {s.name: i for i, s in enumerate(self.stages)}
        done = int(state["iteration"]) // max(len(self.train_loader), 1)
        at = int(state["stage_index"])
        kept = []
        for row in rows:
            i = index.get(row.get("stage"), len(self.stages))  # type: ignore[arg-type]
            epoch = row.get("epoch")
            if not isinstance(epoch, int):
                continue
            if i < at or (i == at and epoch <= done):
                kept.append(row)
        return kept

    def _resume_state(self) -> dict[str, Any] | None:
        loaded = self.run_dir.latest_checkpoint()
        if loaded is None:
            return None
        weights, state = loaded
        missing, unexpected = _compare_keys(self.distiller.state_dict(), weights)
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint in {str(self.run_dir)!r} does not fit this recipe: missing "
                f"{missing[:5]}, unexpected {unexpected[:5]}"
            )
        required = {"stage_index": int, "iteration": int, "optimizer": dict, "scheduler": dict}
        for key, kind in required.items():
            if not isinstance(state, dict) or not isinstance(state.get(key), kind):
                raise CheckpointError(
                    f"checkpoint in {str(self.run_dir)!r}: state.pt lacks {key!r} "
                    "(not a kdlab checkpoint?)"
                )
        if not 0 <= state["stage_index"] < len(self.stages):
            raise CheckpointError(
                f"checkpoint in {str(self.run_dir)!r} is at stage {state['stage_index']} but "
                f"this recipe has {len(self.stages)} stages; was the recipe changed?"
            )
        try:
            self.distiller.load_state_dict(weights)
        except RuntimeError as err:  # same keys, other shapes: a changed recipe
            raise CheckpointError(
                f"checkpoint in {str(self.run_dir)!r} does not fit this recipe: {err}"
            ) from None
        state["elapsed"] = float(state.get("elapsed", 0.0))
        return state

    def run_stage(self, index: int, stage: Stage, resume: dict[str, Any] | None) -> None:
        """One stage as an Ignite engine; ``resume`` is a checkpoint state inside it."""
        cfg = self.cfg
        params = trainable_parameters(self.distiller, stage)
        optimizer = build_optimizer(params, stage.optimizer)
        scheduler = build_scheduler(optimizer, stage.schedule, stage.epochs)
        loader = self.train_loader
        # DDP syncs the parameters this stage trains; pre-stages (and terms idle in the
        # main stage) leave some without a gradient, which DDP must be told to expect.
        idle = any(not t.main_stage for t in self.distiller.terms.values())
        ddp = [dist.wrap(self.distiller, self.device, find_unused=not stage.is_main or idle)]
        aug = cfg.data.augment
        step = make_step(
            ddp[0],
            self.distiller,
            optimizer,
            params,
            stage,
            stage_index=index,
            seed=cfg.seed,
            rank=self.rank,
            precision=self.precision,
            channels_last=self.channels_last,
            grad_clip=cfg.train.grad_clip,
            augment=(lambda x: augment(x, aug.crop_padding, aug.hflip))
            if aug.crop_padding or aug.hflip
            else None,
        )
        engine = Engine(step)
        run = StageRun(self, stage, index, optimizer, scheduler, loader, self.precision)
        run.handlers = self.handlers
        # The loop itself: each epoch's order, then the per-epoch schedule.
        engine.add_event_handler(
            Events.EPOCH_STARTED, lambda e: loader.set_epoch(e.state.epoch - 1 + 1000 * index)
        )
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: scheduler.step())
        for handler in self.handlers:
            handler.attach(engine, run)
        if resume is not None:
            self._restore(engine, run, resume)
        try:
            if resume is None or resume["iteration"] < run.total:
                engine.run(loader, max_epochs=stage.epochs, epoch_length=len(loader))
        finally:
            ddp.clear()  # free DDP (and its gradient hooks) before the next stage wraps anew

    def _restore(self, engine: Engine, run: StageRun, state: dict[str, Any]) -> None:
        try:
            run.optimizer.load_state_dict(state["optimizer"])
            run.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(
                f"checkpoint in {str(self.run_dir)!r}: optimizer state does not fit stage "
                f"{run.stage.name!r} of this recipe ({err}); was the recipe changed?"
            ) from None
        self.precision.load_state_dict(state.get("scaler") or {})
        saved = state.get("handlers") or {}
        for handler in run.handlers:
            if handler.name and handler.name in saved:
                handler.load_state_dict(saved[handler.name])
        n = len(run.loader)
        engine.load_state_dict(
            {"iteration": state["iteration"], "epoch_length": n, "max_epochs": run.stage.epochs}
        )
        run.loader.start_batch = state["iteration"] % n

    def _finish(self) -> RunResult:
        student = self.distiller.student
        test = self._eval_loader(self.data.test)
        last_weights = {k: v.detach().clone() for k, v in student.state_dict().items()}
        last = self.evaluator.evaluate(student, test)
        has_best = self.val_loader is not None and self.best.score is not None
        if has_best:
            best_state = self.run_dir.load_weights("best") if self.rank == 0 else last_weights
            student.load_state_dict(dist.broadcast_state(best_state))
            best = self.evaluator.evaluate(student, test)
            epoch = self.best.epoch
        else:
            best, epoch = last, self.cfg.train.epochs
        val_best = None
        if has_best:
            row = next((r for r in self.history if r["stage"] == MAIN and r["epoch"] == epoch), {})
            val_best = {k[4:]: v for k, v in row.items() if k.startswith("val_")}
        result = RunResult(
            run_dir=str(self.run_dir),
            selection="best-val" if has_best else "last",
            evaluator=self.evaluator.name,
            select=self.select,
            mode=self.mode,
            best_epoch=int(epoch),
            val_best=val_best,
            test_best=best,
            test_last=last,
            params=count_parameters(student),
            wall_time_s=self.elapsed(),
            history=self.history,
        )
        if self.rank == 0:
            self.run_dir.save_weights("model", student.state_dict())
            self.run_dir.save_weights("last", last_weights)
            self.run_dir.write_results(result.to_json())
        student.load_state_dict(last_weights)
        return result


def train(
    recipe: RunConfig,
    run_dir: str | Path | RunDir | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    bundle: DataBundle | None = None,
    evaluator: Evaluator | None = None,
    handlers: Sequence[Handler] = (),
) -> RunResult:
    """Train ``recipe`` in ``run_dir`` (default ``output_dir/name``): the one way to train.

    Args:
        resume: continue from the newest good checkpoint in the run folder (the recipe
            must keep its fingerprint: see :mod:`kdlab.rundir`).
        overwrite: a fresh run may replace a run already in the folder.
        bundle: an already built dataset (skips ``build_dataset``; e.g. for pipelines).
        evaluator: scores validation and test (default: ``train.evaluator``).
        handlers: :class:`~kdlab.engine.handlers.Handler` objects attached to every
            stage after the trainer's own: e.g. ``ReportProgress(fn)`` (called as
            ``fn(stage, iteration, total)``), ``Timing()``, a tuner's pruning.
    """
    trainer = Trainer(recipe, run_dir, bundle=bundle, evaluator=evaluator, handlers=handlers)
    return trainer.run(resume=resume, overwrite=overwrite)
