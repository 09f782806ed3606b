"""Experiment logging through Ignite's loggers: ``train.loggers: [tensorboard, mlflow]``.

Opt-in; ``metrics.jsonl`` in the run folder stays the record kdlab itself reads. On
rank 0, for every stage:

- every ``train.log_every`` iterations (``log_every: 1`` for each one), the step's
  losses under tag ``train`` (``loss``, the total, and one per term), at the global
  iteration (counted over all stages, so pre-stages come first on one axis);
- at each epoch's end, the epoch's row of ``metrics.jsonl`` (``lr``, ``train_*``,
  ``val_*``) under tag ``epoch``, at the same global iteration;
- at the end, the test metrics of the selected and the last epoch (``test/<metric>_best``,
  ``test/<metric>_last``);
- once, the resolved recipe: MLflow parameters (flattened dotted keys, list items by
  index) and the run's name; the YAML as TensorBoard text.

Where: TensorBoard event files in ``RUN/logs/tensorboard`` (``tensorboard --logdir
runs`` shows every run); MLflow's tracking URI when one is set (``MLFLOW_TRACKING_URI``
or ``mlflow.set_tracking_uri``), else a local file store in ``RUN/logs/mlruns`` (read it
with ``mlflow ui --backend-store-uri RUN/logs/mlruns``; MLflow >= 3.7 keeps file stores in
maintenance mode, so kdlab sets ``MLFLOW_ALLOW_FILE_STORE=true`` for that store). An
MLflow run already active in the process (a notebook's) gets the training as a nested
run. A resumed run appends to the same TensorBoard folder and starts a new MLflow run.

Extras: ``pip install 'kdlab[tensorboard]'`` / ``'kdlab[mlflow]'``; a missing one is a
ConfigError when the trainer is built, before any training.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ignite.engine import Engine, Events

from kdlab.engine.handlers import Handler, StageRun
from kdlab.engine.step import StepOutput
from kdlab.errors import ConfigError

if TYPE_CHECKING:
    from kdlab.engine.runner import RunResult

LOGGERS = ("tensorboard", "mlflow")
EXTRAS = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}
_OWN_STORES: set[str] = set()  # the tracking URIs kdlab chose for its runs' file stores


def check_loggers(names: Sequence[str]) -> None:
    """Each named logger's package is importable, else a ConfigError naming the extra."""
    for name in names:
        if name not in EXTRAS:
            raise ConfigError(f"train.loggers: unknown logger {name!r}; valid: {list(LOGGERS)}")
        if not any(importlib.util.find_spec(m) is not None for m in EXTRAS[name]):
            raise ConfigError(
                f"train.loggers: {name!r} needs the {EXTRAS[name][0]} package, which is not "
                f"installed here: pip install 'kdlab[{name}]' (or remove it from train.loggers)"
            )


def params(data: Any, prefix: str = "") -> dict[str, str]:
    """A nested recipe as ``{dotted.key: value}`` strings (list items by index)."""
    if isinstance(data, dict) and data:
        items = data.items()
    elif isinstance(data, list) and data:
        items = ((str(i), v) for i, v in enumerate(data))
    else:
        return {prefix: str(data)}
    out: dict[str, str] = {}
    for k, v in items:
        out.update(params(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _step_scalars(out: StepOutput) -> dict[str, float]:
    # One host sync per logged iteration: the reason this runs every log_every steps.
    return {"loss": float(out.total), **{k: float(v) for k, v in out.losses.items()}}


def _epoch_scalars(row: dict[str, Any]) -> dict[str, float]:
    skip = ("stage", "epoch", "time")
    return {k: float(v) for k, v in row.items() if k not in skip and isinstance(v, (int, float))}


class ExperimentLoggers(Handler):
    """The loggers of ``train.loggers``, opened at the first stage and closed when the
    run ends (see the module docstring for what each receives)."""

    def __init__(self, names: Sequence[str]) -> None:
        check_loggers(names)
        self.names = list(dict.fromkeys(names))
        self.loggers: dict[str, Any] = {}

    def _open(self, run: StageRun) -> None:
        cfg = run.cfg
        folder = run.run_dir.logs
        if "tensorboard" in self.names:
            from ignite.handlers.tensorboard_logger import TensorboardLogger  # noqa: PLC0415

            tb = TensorboardLogger(log_dir=str(folder / "tensorboard"))
            from kdlab.config import dump_config  # noqa: PLC0415

            tb.writer.add_text("config", "```\n" + dump_config(cfg) + "```", 0)
            self.loggers["tensorboard"] = tb
        if "mlflow" in self.names:
            self.loggers["mlflow"] = self._open_mlflow(run, folder / "mlruns")

    @staticmethod
    def _open_mlflow(run: StageRun, store: Any) -> Any:
        import mlflow  # noqa: PLC0415 - optional extra
        from ignite.handlers.mlflow_logger import MLflowLogger  # noqa: PLC0415

        # MLflow keeps a chosen URI in a process global and in MLFLOW_TRACKING_URI (for
        # subprocesses): one kdlab chose for an earlier run is not the user's choice.
        given = os.environ.get("MLFLOW_TRACKING_URI")
        if not given and _tracking_uri_set(mlflow):
            given = mlflow.get_tracking_uri()
        if not given or given in _OWN_STORES:
            uri = store.resolve().as_uri()  # MLflow creates it, with its default experiment
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri(uri)
            _OWN_STORES.update({uri, mlflow.get_tracking_uri()})
        else:  # the user's, also where an earlier kdlab run left its own in the global
            mlflow.set_tracking_uri(given)
        # Inside a caller's active run, a nested one: closing ours leaves theirs open.
        mlflow.start_run(run_name=run.cfg.name, nested=mlflow.active_run() is not None)
        logger = MLflowLogger()  # logs into the run just started
        logger.log_params(params(run.cfg.model_dump(mode="json")))
        return logger

    def attach(self, engine: Engine, run: StageRun) -> None:
        if not run.is_main:
            return
        if not self.loggers:
            self._open(run)
        from ignite.handlers import mlflow_logger, tensorboard_logger  # noqa: PLC0415

        offset = sum(s.epochs for s in run.trainer.stages[: run.index]) * len(run.loader)

        def step(e: Engine, _event: Any) -> int:
            return offset + e.state.iteration

        handlers: dict[str, Callable[..., Any]] = {
            "tensorboard": tensorboard_logger.OutputHandler,
            "mlflow": mlflow_logger.OutputHandler,
        }
        every = Events.ITERATION_COMPLETED(every=run.cfg.train.log_every)
        for name, logger in self.loggers.items():
            output = handlers[name]
            logger.attach(
                engine,
                output("train", output_transform=_step_scalars, global_step_transform=step),
                every,
            )
            logger.attach(
                engine,
                output(
                    "epoch",
                    output_transform=lambda _out, e=engine: _epoch_scalars(e.state.metrics),
                    global_step_transform=step,
                ),
                Events.EPOCH_COMPLETED,
            )

    def close(self, result: RunResult | None) -> None:
        """Log the test metrics (when the run finished) and close every logger; an MLflow
        run that failed is marked FAILED."""
        if not self.loggers:
            return
        final = {}
        if result is not None:
            final = {f"test/{k}_best": v for k, v in result.test_best.items()}
            final.update({f"test/{k}_last": v for k, v in result.test_last.items()})
        tb = self.loggers.get("tensorboard")
        if tb is not None:
            for key, value in final.items():
                tb.writer.add_scalar(key, value, 0)
            tb.close()
        ml = self.loggers.get("mlflow")
        if ml is not None:
            import mlflow  # noqa: PLC0415

            if final:
                ml.log_metrics(final)
            mlflow.end_run(status="FINISHED" if result is not None else "FAILED")
        self.loggers = {}


def _tracking_uri_set(mlflow: Any) -> bool:
    """Whether the process chose a tracking URI (``mlflow.set_tracking_uri``)."""
    try:
        from mlflow.tracking._tracking_service.utils import is_tracking_uri_set  # noqa: PLC0415
    except ImportError:  # a private helper: without it, only the environment variable counts
        return False
    return bool(is_tracking_uri_set())
