"""kdlab tune: the search-space format, a tiny study on SQLite, pruning, a killed worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from kdlab.config import load_config  # noqa: E402
from kdlab.errors import ConfigError  # noqa: E402
from kdlab.tune import (  # noqa: E402
    TuneSettings,
    apply_params,
    check_space,
    default_storage,
    load_space,
    open_study,
    set_dotted,
    split_trials,
    tune,
    worker_command,
)

SRC = Path(__file__).resolve().parents[1] / "src"

RECIPE = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "digits", "batch_size": 50, "per_class": 10},
    "student": {"name": "mlp", "kwargs": {"hidden": [16]}},
    "teacher": {"name": "mlp", "kwargs": {"hidden": [32]}},
    "distill": {"terms": [{"method": "ce"}, {"method": "kd", "T": 4.0}]},
    "train": {
        "epochs": 3,
        "optimizer": {"lr": 0.1},
        "schedule": {"name": "constant"},
        "progress": False,
        "device": "cpu",
        "threads": 1,
    },
}
SPACE = {
    "train.optimizer.lr": {"type": "loguniform", "low": 0.01, "high": 0.5},
    "distill.terms.kd.T": {"type": "float", "low": 1.0, "high": 8.0},
    "distill.terms.1.weight": {"type": "float", "low": 0.1, "high": 0.9, "step": 0.1},
    "data.batch_size": {"type": "categorical", "choices": [25, 50]},
}


def _settings(tmp: Path, recipe: dict = RECIPE, space: dict = SPACE, **kw) -> TuneSettings:
    (tmp / "recipe.yaml").write_text(yaml.safe_dump({**recipe, "output_dir": str(tmp / "runs")}))
    (tmp / "space.yaml").write_text(yaml.safe_dump(space))
    out = tmp / "out"
    return TuneSettings(
        config=str(tmp / "recipe.yaml"),
        overrides=kw.pop("overrides", []),
        space=str(tmp / "space.yaml"),
        storage=default_storage(out),
        study="tiny",
        out=str(out),
        **kw,
    )


# ------------------------------------------------------------------ the space format


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "float", "low": 1.0}, "needs both 'low' and 'high'"),
        ({"type": "float", "low": 2.0, "high": 1.0}, "must be below 'high'"),
        ({"type": "loguniform", "low": 0.0, "high": 1.0}, "low > 0"),
        ({"type": "int", "low": 1.5, "high": 4}, "whole-number"),
        ({"type": "categorical"}, "non-empty 'choices'"),
        ({"type": "categorical", "choices": [1], "low": 0}, "choices' only"),
        ({"type": "gauss", "low": 0, "high": 1}, "type"),
        ({"type": "float", "low": 0, "high": 1, "hi": 2}, "unknown key 'lr.hi'"),
    ],
)
def test_space_errors_name_the_key(spec: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_space({"lr": spec})
    assert "lr" in str(err.value)


def test_space_must_be_mappings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_space({"train.epochs": [1, 2]})
    (tmp_path / "s.yaml").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_space(tmp_path / "s.yaml")


def test_space_keys_are_checked_against_the_recipe() -> None:
    check_space(RECIPE, load_space(SPACE))
    with pytest.raises(ConfigError, match="train.optimiser.lr.*did you mean 'optimizer'"):
        check_space(
            RECIPE, load_space({"train.optimiser.lr": {"type": "float", "low": 0.1, "high": 1}})
        )
    with pytest.raises(ConfigError, match="distill.terms.kd.temperature"):
        check_space(
            RECIPE, load_space({"distill.terms.kd.temperature": SPACE["distill.terms.kd.T"]})
        )
    # Extreme values are validated too: a negative weight is out of range.
    with pytest.raises(ConfigError, match=r"distill.terms.1.weight' = -1.0"):
        check_space(
            RECIPE, load_space({"distill.terms.1.weight": {"type": "float", "low": -1, "high": 1}})
        )
    with pytest.raises(ConfigError, match="'fitnet' is not an index of a list of 2.*'ce', 'kd'"):
        check_space(RECIPE, load_space({"distill.terms.fitnet.T": SPACE["distill.terms.kd.T"]}))


def test_set_dotted_by_index_and_term_name() -> None:
    data = apply_params(RECIPE, {"distill.terms.kd.T": 2.5, "distill.terms.0.weight": 0.3})
    assert data["distill"]["terms"] == [{"method": "ce", "weight": 0.3}, {"method": "kd", "T": 2.5}]
    assert RECIPE["distill"]["terms"][1]["T"] == 4.0  # the base recipe is untouched
    d: dict = {"a": None}
    set_dotted(d, "a.b.c", 1)
    assert d == {"a": {"b": {"c": 1}}}
    with pytest.raises(ConfigError, match="'5' is not an index of a list of 2 nor the name"):
        set_dotted(data, "distill.terms.5.T", 1.0)


def test_split_trials() -> None:
    assert split_trials(7, 3) == [3, 2, 2]
    assert sum(split_trials(5, 2)) == 5
    assert split_trials(None, 2) == [None, None]


# ------------------------------------------------------------------ a study


def test_tiny_study_on_sqlite(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    summary = tune(settings, n_trials=3)
    out = Path(settings.out)
    study = optuna.load_study(study_name="tiny", storage=settings.storage)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and summary["best_value"] == max(t.value for t in done)
    for t in done:
        # The objective is the run's best validation accuracy (never test), and the
        # pruner saw every main-stage epoch's validation accuracy.
        run = Path(t.user_attrs["run_dir"])
        results = json.loads((run / "results.json").read_text())
        assert t.value == results["val_acc"]
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert t.intermediate_values == {r["epoch"]: r["val_acc1"] for r in rows}
        assert set(t.params) == set(SPACE)
    # The best recipe is ready to train and holds the best parameters.
    best = study.best_trial
    cfg = load_config(out / "best.yaml")
    assert cfg.train.optimizer.lr == pytest.approx(best.params["train.optimizer.lr"])
    assert cfg.distill.terms[1]["T"] == pytest.approx(best.params["distill.terms.kd.T"])
    assert cfg.data.batch_size == best.params["data.batch_size"]
    assert cfg.name == "tiny-tuned"
    for name in ("history.png", "importance.png", "trials.csv", "summary.json"):
        assert (out / name).stat().st_size > 0
    assert (out / "history.png").read_bytes()[:4] == b"\x89PNG"


def test_pruning_on_validation(tmp_path: Path) -> None:
    settings = _settings(tmp_path, space={"train.optimizer.lr": SPACE["train.optimizer.lr"]})
    study = open_study(settings, 3)
    # Two good trials set the median; a tiny learning rate falls below it at epoch 1.
    for lr in (0.3, 0.3, 1e-4):
        study.enqueue_trial({"train.optimizer.lr": lr})
    tune(settings, n_trials=3)
    trials = optuna.load_study(study_name="tiny", storage=settings.storage).get_trials()
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert len(trials[2].intermediate_values) < RECIPE["train"]["epochs"]


def test_killed_worker_trial_is_marked_failed(tmp_path: Path) -> None:
    # A worker busy with a long trial is SIGKILLed; its heartbeat stops, and the next
    # worker to start a trial marks it FAIL (not RUNNING forever) and carries on.
    long = {**RECIPE, "train": {**RECIPE["train"], "epochs": 500}}
    settings = _settings(tmp_path, recipe=long, heartbeat=1)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        worker_command(settings, 1, None, 0),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # Kill once the trial is running and training (its start is logged).
        log_file = Path(settings.out) / "trials.log"
        deadline = time.time() + 90
        while time.time() < deadline:
            if log_file.is_file() and log_file.read_text().endswith("\n"):
                break
            assert proc.poll() is None, "the worker ended before its trial started"
            time.sleep(0.3)
        else:
            pytest.fail("the worker never started a trial")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    study = optuna.load_study(study_name="tiny", storage=settings.storage)
    assert [t.state.name for t in study.get_trials()] == ["RUNNING"]
    time.sleep(3.5)  # grace period: 3 heartbeats of 1 s
    settings.config = str(tmp_path / "short.yaml")
    (tmp_path / "short.yaml").write_text(yaml.safe_dump({**RECIPE, "output_dir": str(tmp_path)}))
    summary = tune(settings, n_trials=1)
    trials = optuna.load_study(study_name="tiny", storage=settings.storage).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert summary["states"] == {"COMPLETE": 1, "FAIL": 1}
    log = [json.loads(x) for x in (Path(settings.out) / "trials.log").read_text().splitlines()]
    assert [r["trial"] for r in log] == [0, 1]
    assert log[0]["worker"] != log[1]["worker"]


def test_shipped_digits_space_fits_its_recipe() -> None:
    root = Path(__file__).resolve().parents[1] / "configs" / "digits" / "tune"
    recipe = yaml.safe_load((root / "kd.yaml").read_text())
    space = load_space(root / "kd-space.yaml")
    check_space(recipe, space)
    assert set(space) >= {"train.optimizer.lr", "distill.terms.kd.T"}
