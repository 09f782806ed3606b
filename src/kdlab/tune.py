"""Hyperparameter search over any recipe key with Optuna (``pip install 'kdlab[tune]'``).

A search space is a YAML mapping from dotted recipe keys to distributions::

    train.optimizer.lr:        {type: loguniform, low: 0.005, high: 0.5}
    distill.terms.kd.T:        {type: float, low: 1, high: 8}
    distill.terms.kd.weight:   {type: float, low: 0.1, high: 1.0, step: 0.1}
    data.batch_size:           {type: categorical, choices: [32, 64, 128]}
    train.epochs:              {type: int, low: 5, high: 20, step: 5}

Inside a list (``distill.terms``) an item is named by its index or by its term
``name``/``method``. Each trial trains the recipe with its sampled values, reports the
main stage's validation score (the recipe's ``train.select``: top-1 accuracy by default)
after every epoch to a median pruner (:class:`OptunaPruning`, an engine handler), and
returns the best epoch's validation score: the test split is never looked at. The
study's direction is the selection metric's. Sampling is TPE.

Trials live in an Optuna study in a relational database: a SQLite file by default, or
any SQLAlchemy URL, e.g. PostgreSQL, so that workers on several machines share one
study. Running trials send a heartbeat; a trial whose worker died (killed, machine lost)
is marked FAIL once its heartbeat is older than the grace period, by the next worker to
start a trial or by the final sweep of ``kdlab tune``, and the study goes on.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from ignite.engine import Engine, Events
from pydantic import model_validator

from kdlab.config import Strict, read_yaml, set_dotted, validate
from kdlab.engine.handlers import Handler, StageRun
from kdlab.errors import ConfigError, KdlabError


class ParamSpec(Strict):
    """One searched key: ``type`` and its bounds or choices."""

    type: Literal["float", "int", "categorical", "loguniform"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.step is not None:
                raise ValueError("categorical takes 'choices' only (no low/high/step)")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low/high, not 'choices'")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs both 'low' and 'high'")
        if not self.low < self.high:
            raise ValueError(f"'low' ({self.low}) must be below 'high' ({self.high})")
        if self.type == "loguniform":
            if self.low <= 0:
                raise ValueError(f"loguniform needs low > 0, got {self.low}")
            if self.step is not None:
                raise ValueError("loguniform takes no 'step'")
        if self.type == "int":
            if self.low != int(self.low) or self.high != int(self.high):
                raise ValueError("int needs whole-number 'low' and 'high'")
            if self.step is not None and (self.step != int(self.step) or self.step < 1):
                raise ValueError("int 'step' must be a whole number >= 1")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"'step' must be > 0, got {self.step}")
        return self

    def suggest(self, trial: Any, key: str) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(key, self.choices)
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return trial.suggest_int(key, int(self.low), int(self.high), step=int(self.step or 1))
        if self.type == "loguniform":
            return trial.suggest_float(key, self.low, self.high, log=True)
        return _clean(trial.suggest_float(key, self.low, self.high, step=self.step))

    def samples(self) -> list[Any]:
        """Values checked against the recipe before any trial runs."""
        if self.type == "categorical":
            return list(self.choices or [])
        if self.type == "int":
            return [int(self.low or 0), int(self.high or 0)]
        return [self.low, self.high]


def load_space(source: str | Path | Mapping[str, Any]) -> dict[str, ParamSpec]:
    """Read and validate a search space; errors name the file and the key."""
    where = str(source) if isinstance(source, (str, Path)) else "space"
    raw = read_yaml(source) if isinstance(source, (str, Path)) else dict(source)
    if not raw:
        raise ConfigError(f"search space {where!r} is empty: give at least one dotted key")
    space = {}
    for key, spec in raw.items():
        if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"search space {where!r}: {key!r} is not a dotted recipe key")
        if not isinstance(spec, dict):
            raise ConfigError(
                f"search space {where!r}, key {key!r}: expected a mapping like "
                "{type: float, low: 0.1, high: 1.0}, got " + repr(spec)
            )
        try:
            space[key] = validate(ParamSpec, spec, where=key)
        except ConfigError as err:
            raise ConfigError(f"search space {where!r}: {err}") from None
    return space


# ----------------------------------------------------------------- recipe keys


def apply_params(base: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(data, key, value, what="search key")
    return data


def check_space(base: dict[str, Any], space: Mapping[str, ParamSpec]) -> None:
    """Every key takes its extreme values in the recipe: a typo fails here, not in trial 7."""
    from kdlab.config import load_recipe  # noqa: PLC0415

    for key, spec in space.items():
        for value in spec.samples():
            data = apply_params(base, {key: value})  # its errors name the search key
            try:
                load_recipe(data)  # terms, views and stages included
            except ConfigError as err:
                raise ConfigError(f"search key {key!r} = {value!r}: {err}") from None


# ----------------------------------------------------------------- the study


def _optuna() -> Any:
    try:
        import optuna  # noqa: PLC0415 - optional extra
    except ImportError:
        raise KdlabError(
            "kdlab tune needs Optuna, which is not installed: pip install 'kdlab[tune]'"
        ) from None
    # Heartbeats and stale-trial sweeps are "experimental" in Optuna; kdlab relies on them.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass
class TuneSettings:
    """What every worker of one ``kdlab tune`` needs to know."""

    config: str
    overrides: list[str]
    space: str
    storage: str
    study: str
    out: str
    seed: int = 0
    heartbeat: int = 10
    prune: bool = True


def default_storage(out: str | Path) -> str:
    return f"sqlite:///{Path(out).resolve() / 'study.db'}"


def make_storage(url: str, heartbeat: int = 10) -> Any:
    """An RDB storage with heartbeats (grace: 3 beats) so dead workers' trials fail."""
    optuna = _optuna()
    url = _with_driver(url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("sqlite"):
        # Several local workers write one file: wait for the lock rather than error.
        engine_kwargs["connect_args"] = {"timeout": 120}
    else:
        engine_kwargs["pool_pre_ping"] = True
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat,
            grace_period=3 * heartbeat,
        )
    except Exception as err:  # sqlalchemy / driver errors come in many types
        raise ConfigError(
            f"--storage {_redact(url)!r} cannot be opened ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); use sqlite:///FILE or a "
            "SQLAlchemy URL such as postgresql://user:password@host/db"
        ) from None


def _with_driver(url: str) -> str:
    """``postgresql://`` with the driver the ``tune`` extra installs (psycopg2).

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3; kdlab ships psycopg2, so a
    bare URL uses it unless psycopg 3 is importable. Explicit ``+driver`` URLs are kept.
    """
    if not url.startswith(("postgresql://", "postgres://")):
        return url
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec("psycopg") is not None:
        return url.replace("postgres://", "postgresql://", 1)
    return "postgresql+psycopg2://" + url.split("://", 1)[1]


def _redact(url: str) -> str:
    # Never print a database password.
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def objective_of(settings: TuneSettings) -> tuple[str, str]:
    """The base recipe's selection metric and direction (``max``/``min``)."""
    from kdlab.config import load_recipe  # noqa: PLC0415
    from kdlab.engine.evaluators import selection  # noqa: PLC0415

    return selection(load_recipe(_base_recipe(settings)).train)


class OptunaPruning(Handler):
    """Reports the main stage's validation score to an Optuna trial after every epoch
    and stops the run (``optuna.TrialPruned``) when the pruner gives up on it."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.key = trial, f"val_{metric}"

    def attach(self, engine: Engine, run: StageRun) -> None:
        if run.stage.is_main:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._report)

    def _report(self, engine: Engine) -> None:
        score = engine.state.metrics.get(self.key)
        if score is None:
            return
        self.trial.report(score, step=engine.state.epoch)
        if self.trial.should_prune():
            raise _optuna().TrialPruned(f"epoch {engine.state.epoch}: {self.key} {score:.4g}")


def open_study(settings: TuneSettings, n_trials: int | None = None) -> Any:
    optuna = _optuna()
    startup = 10 if n_trials is None else max(2, min(10, n_trials // 3))
    sampler = optuna.samplers.TPESampler(
        seed=settings.seed, n_startup_trials=startup, constant_liar=True
    )
    pruner = (
        # Epochs count from 1; the first epoch is too noisy to judge a trial by.
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
        if settings.prune
        else optuna.pruners.NopPruner()
    )
    return optuna.create_study(
        study_name=settings.study,
        storage=make_storage(settings.storage, settings.heartbeat),
        sampler=sampler,
        pruner=pruner,
        direction="minimize" if objective_of(settings)[1] == "min" else "maximize",
        load_if_exists=True,
    )


def _base_recipe(settings: TuneSettings) -> dict[str, Any]:
    from kdlab.config import apply_overrides  # noqa: PLC0415
    from kdlab.recipes import find  # noqa: PLC0415

    return apply_overrides(read_yaml(find(settings.config)), settings.overrides)


def run_worker(settings: TuneSettings, n_trials: int | None, timeout: float | None) -> int:
    """Run trials of the shared study until ``n_trials`` or ``timeout``; returns how many."""
    _optuna()
    from kdlab.config import load_config  # noqa: PLC0415
    from kdlab.data import build_dataset  # noqa: PLC0415
    from kdlab.engine import train  # noqa: PLC0415
    from kdlab.errors import NumericalError  # noqa: PLC0415

    # Ignite logs every exception that stops an engine; a pruned trial is no error.
    logging.getLogger("ignite.engine.engine.Engine").setLevel(logging.CRITICAL)
    base = _base_recipe(settings)
    space = load_space(settings.space)
    out = Path(settings.out)
    (out / "trials").mkdir(parents=True, exist_ok=True)
    study = open_study(settings, n_trials)
    metric = objective_of(settings)[0]
    worker = f"{socket.gethostname()}:{os.getpid()}"
    datasets: dict[str, Any] = {}

    def objective(trial: Any) -> float:
        params = {key: spec.suggest(trial, key) for key, spec in space.items()}
        data = apply_params(base, params)
        data["name"] = f"{settings.study}-{trial.number:04d}"
        cfg = load_config(data)
        cfg.train.progress = False
        if cfg.data.val_fraction <= 0:
            raise ConfigError("tuning selects on the validation split: set data.val_fraction > 0")
        run_dir = out / "trials" / cfg.name
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("run_dir", str(run_dir))
        _log_execution(out, trial.number, worker)
        key = json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)
        if key not in datasets:
            datasets.clear()
            datasets[key] = build_dataset(cfg.data)
        if datasets[key].val is None:
            raise ConfigError("tuning selects on the validation split: the dataset has none")
        result = train(
            cfg,
            run_dir=run_dir,
            bundle=datasets[key],
            handlers=[OptunaPruning(trial, metric)],
            overwrite=True,
        )
        trial.set_user_attr("best_epoch", result.best_epoch)
        assert result.val_score is not None
        return float(result.val_score)

    def announce(study: Any, trial: Any) -> None:
        value = "" if trial.value is None else f" val={trial.value:.2f}"
        shown = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        print(f"[{worker}] trial {trial.number} {trial.state.name}{value} {shown}", flush=True)

    before = len(study.get_trials(deepcopy=False))
    study.optimize(
        objective,
        n_trials=n_trials,
        timeout=timeout,
        catch=(NumericalError,),  # a diverging lr fails its trial, not the search
        callbacks=[announce],
        gc_after_trial=True,
    )
    return len(study.get_trials(deepcopy=False)) - before


def _log_execution(out: Path, number: int, worker: str) -> None:
    # One line per trial started, appended atomically: who ran what, and when.
    line = json.dumps({"trial": number, "worker": worker, "time": time.time()}) + "\n"
    fd = os.open(out / "trials.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _clean(v: Any) -> Any:
    # A stepped float comes back as 0.7000000000000001; recipes should read 0.7.
    return float(f"{v:.12g}") if isinstance(v, float) else v


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def split_trials(total: int | None, workers: int) -> list[int | None]:
    """``total`` trials over ``workers`` (None: each runs until the timeout)."""
    if total is None:
        return [None] * workers
    return [total // workers + (1 if i < total % workers else 0) for i in range(workers)]


def tune(
    settings: TuneSettings,
    n_trials: int | None = 20,
    timeout: float | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Create or join the study, run local workers, sweep dead trials, write the report.

    With ``workers > 1`` each worker is a ``kdlab tune --worker`` process (as it would be
    on another machine); ``n_trials`` is split between them.
    """
    if n_trials is None and timeout is None:
        raise ConfigError("give --trials or --timeout (or both): the search must end")
    space = load_space(settings.space)
    check_space(_base_recipe(settings), space)
    Path(settings.out).mkdir(parents=True, exist_ok=True)
    open_study(settings, n_trials)  # create it once, before workers race to
    quotas = [q for q in split_trials(n_trials, workers) if q is None or q > 0]
    failed = 0
    if len(quotas) == 1:
        run_worker(settings, quotas[0], timeout)
    else:
        procs = [
            subprocess.Popen(worker_command(settings, q, timeout, settings.seed + i))
            for i, q in enumerate(quotas)
        ]
        failed = sum(p.wait() != 0 for p in procs)
    study = open_study(settings, n_trials)
    sweep_dead_trials(study, wait=failed > 0, grace=3 * settings.heartbeat)
    summary = write_report(study, settings, space)
    summary["failed_workers"] = failed
    return summary


def worker_command(
    settings: TuneSettings, n_trials: int | None, timeout: float | None, seed: int
) -> list[str]:
    cmd = [sys.executable, "-m", "kdlab", "tune", settings.config, *settings.overrides]
    cmd += ["--space", settings.space, "--storage", settings.storage, "--study", settings.study]
    cmd += ["--out", settings.out, "--seed", str(seed), "--heartbeat", str(settings.heartbeat)]
    cmd += ["--worker"]
    if n_trials is not None:
        cmd += ["--trials", str(n_trials)]
    if timeout is not None:
        cmd += ["--timeout", str(timeout)]
    if not settings.prune:
        cmd += ["--no-prune"]
    return cmd


def sweep_dead_trials(study: Any, wait: bool, grace: float) -> list[int]:
    """Mark trials whose heartbeat stopped as FAIL; optionally wait out the grace period."""
    optuna = _optuna()
    running = optuna.trial.TrialState.RUNNING
    deadline = time.time() + (grace + 2 if wait else 0)
    while True:
        optuna.storages.fail_stale_trials(study)
        left = [t.number for t in study.get_trials(deepcopy=False, states=(running,))]
        if not left or time.time() >= deadline:
            return left
        time.sleep(1.0)


# ----------------------------------------------------------------- the report


def write_report(study: Any, settings: TuneSettings, space: Mapping[str, ParamSpec]) -> dict:
    """``best.yaml`` (a ready recipe), ``summary.json``, ``trials.csv`` and plots in out/."""
    optuna = _optuna()
    from kdlab.report import write_csv  # noqa: PLC0415

    out = Path(settings.out)
    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == states.COMPLETE]
    counts = {s.name: sum(t.state == s for t in trials) for s in states}
    summary: dict[str, Any] = {
        "study": settings.study,
        "storage": _redact(settings.storage),
        "objective": "{1} val_{0} (validation, best epoch)".format(*objective_of(settings)),
        "trials": len(trials),
        "states": {k: v for k, v in counts.items() if v},
    }
    if complete:
        best = study.best_trial
        data = apply_params(_base_recipe(settings), {k: _clean(v) for k, v in best.params.items()})
        data["name"] = f"{data.get('name', 'run')}-tuned"
        header = (
            f"# kdlab tune: study {settings.study!r}, best of {len(complete)} complete trials\n"
            f"# trial {best.number}: val_{objective_of(settings)[0]} {best.value:.4g}\n"
            + "".join(f"#   {k}: {_short(v)}\n" for k, v in best.params.items())
        )
        (out / "best.yaml").write_text(header + yaml.safe_dump(data, sort_keys=False))
        summary.update(
            best_trial=best.number,
            best_value=best.value,
            best_params={k: _clean(v) for k, v in best.params.items()},
            best_recipe=str(out / "best.yaml"),
        )
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "epochs_reported": len(t.intermediate_values),
            "duration_s": t.duration.total_seconds() if t.duration else None,
            "worker": t.user_attrs.get("worker"),
            **{f"param:{k}": v for k, v in t.params.items()},
        }
        for t in trials
    ]
    if rows:
        write_csv(out / "trials.csv", rows)
    summary["plots"] = plot_study(study, out, list(space))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def plot_study(study: Any, out: Path, keys: Sequence[str]) -> list[str]:
    """Optimisation history and parameter importances as PNGs (matplotlib, Agg)."""
    optuna = _optuna()
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    done = [
        t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
    ]
    written = []
    if done:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [t.number for t in done]
        ys = [t.value for t in done]
        ax.scatter(xs, ys, s=18, label="trial")
        ax.plot(xs, [max(ys[: i + 1]) for i in range(len(ys))], color="C1", label="best so far")
        pruned = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values
        ]
        if pruned:
            last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
            ax.scatter(
                [t.number for t in pruned],
                last,
                s=18,
                marker="x",
                color="grey",
                label="pruned (last epoch reported)",
            )
        ax.set_xlabel("trial")
        ax.set_ylabel("validation score (best epoch)")
        ax.set_title(f"optimisation history: {study.study_name}")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(out / "history.png", dpi=100)
        plt.close(fig)
        written.append(str(out / "history.png"))
    importances = _importances(study, optuna)
    if importances:
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(importances)))
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names])
        ax.set_xlabel("importance (Optuna's default evaluator)")
        ax.set_title("parameter importances")
        fig.tight_layout()
        fig.savefig(out / "importance.png", dpi=100)
        plt.close(fig)
        written.append(str(out / "importance.png"))
    return written


def _importances(study: Any, optuna: Any) -> dict[str, float]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "too few trials": the plot says it anyway
            imp = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # too few complete trials, or no variation
        return {}
    return {k: float(v) for k, v in imp.items() if math.isfinite(v)}
