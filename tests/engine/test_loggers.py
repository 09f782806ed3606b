"""``train.loggers``: TensorBoard event files and an MLflow file store, read back.

What they hold is checked against the run folder's own record (``metrics.jsonl``,
``results.json``, ``config.yaml``), which is written by other code.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from ignite.engine import Engine, Events

from kdlab.config import load_recipe
from kdlab.engine import train
from kdlab.engine.handlers import Handler, StageRun
from kdlab.engine.loggers import ExperimentLoggers, params
from kdlab.errors import ConfigError


def _recipe(tmp: Path, loggers: list[str], **train_keys: Any) -> Any:
    return load_recipe(
        {
            "name": "logged",
            "output_dir": str(tmp),
            "student": {"name": "cnn_tiny"},
            "teacher": {"name": "cnn_tiny"},
            "distill": {"terms": [{"method": "ce"}, {"method": "kd"}]},
            "data": {"per_class": 10, "batch_size": 20},  # 5 steps an epoch
            "train": {
                "epochs": 2,
                "progress": False,
                "threads": 1,
                "precision": "fp32",
                "log_every": 2,
                "loggers": loggers,
                **train_keys,
            },
        }
    )


def _rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_events_hold_the_steps_the_epochs_and_the_test(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import (  # noqa: PLC0415
        EventAccumulator,
    )

    run = tmp_path / "run"
    result = train(_recipe(tmp_path, ["tensorboard"]), run)
    events = EventAccumulator(str(run / "logs" / "tensorboard")).Reload()
    scalars = events.Tags()["scalars"]
    # every log_every = 2 iterations of 10, on the global iteration axis
    for tag in ("train/loss", "train/ce", "train/kd"):
        assert [e.step for e in events.Scalars(tag)] == [2, 4, 6, 8, 10]
    rows = _rows(run)
    for key in ("train_loss", "train_kd", "val_acc1", "val_loss", "lr"):
        got = events.Scalars(f"epoch/{key}")
        assert [e.step for e in got] == [5, 10]
        assert [e.value for e in got] == pytest.approx([r[key] for r in rows], rel=1e-6)
    assert "epoch/time" not in scalars and "epoch/epoch" not in scalars
    assert events.Scalars("test/acc1_best")[0].value == pytest.approx(result.test_acc_best)
    assert events.Scalars("test/loss_last")[0].value == pytest.approx(result.test_last["loss"])
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "name: logged" in config and "loggers:\n  - tensorboard" in config


def test_mlflow_file_store_holds_params_metrics_and_status(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    import mlflow  # noqa: PLC0415
    from mlflow.tracking import MlflowClient  # noqa: PLC0415

    run = tmp_path / "run"
    result = train(_recipe(tmp_path, ["mlflow"]), run)
    store = (run / "logs" / "mlruns").resolve().as_uri()
    client = MlflowClient(store)
    (found,) = client.search_runs(["0"])  # the default experiment: one run
    assert found.info.status == "FINISHED" and found.info.run_name == "logged"
    assert mlflow.active_run() is None
    p = found.data.params
    assert p["train.epochs"] == "2" and p["distill.terms.1.method"] == "kd"
    assert p["student.name"] == "cnn_tiny" and p["train.loggers.0"] == "mlflow"
    rows = _rows(run)
    history = client.get_metric_history(found.info.run_id, "epoch val_acc1")
    want = [(5, rows[0]["val_acc1"]), (10, rows[1]["val_acc1"])]
    assert [(m.step, m.value) for m in history] == want
    assert len(client.get_metric_history(found.info.run_id, "train kd")) == 5
    assert found.data.metrics["test/acc1_best"] == pytest.approx(result.test_acc_best)


class _Boom(Handler):
    def attach(self, engine: Engine, run: StageRun) -> None:
        def boom(_e: Engine) -> None:
            raise RuntimeError("boom")

        engine.add_event_handler(Events.ITERATION_COMPLETED(once=3), boom)


def test_a_failed_run_closes_its_mlflow_run_as_failed_in_the_users_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    import mlflow  # noqa: PLC0415
    from mlflow.tracking import MlflowClient  # noqa: PLC0415

    theirs = (tmp_path / "their-store").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", theirs)  # a tracking URI set by the user
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    with pytest.raises(RuntimeError, match="boom"):
        train(_recipe(tmp_path, ["mlflow"]), tmp_path / "run", handlers=[_Boom()])
    assert mlflow.active_run() is None  # the next run in this process starts its own
    assert not (tmp_path / "run" / "logs" / "mlruns").exists()
    (found,) = MlflowClient(theirs).search_runs(["0"])
    assert found.info.status == "FAILED"
    assert len(MlflowClient(theirs).get_metric_history(found.info.run_id, "train loss")) == 1


def test_a_missing_extra_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"'mlflow' needs the mlflow package.*kdlab\[mlflow\]"):
        ExperimentLoggers(["mlflow"])
    with pytest.raises(ConfigError, match="train.loggers.0"):
        load_recipe({"student": {"name": "cnn_tiny"}, "train": {"loggers": ["wandb"]}})


def test_params_flatten_lists_by_index() -> None:
    got = params({"a": {"b": 1, "c": [{"m": "kd"}, 2]}, "d": [], "e": None})
    assert got == {"a.b": "1", "a.c.0.m": "kd", "a.c.1": "2", "d": "[]", "e": "None"}
