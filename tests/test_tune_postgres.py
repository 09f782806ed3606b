"""Two worker processes share one study on a real PostgreSQL server.

Needs ``KDLAB_PG_URL`` (``.ci/run`` starts a server with ``scripts/ci-postgres.sh`` and
sets it); without it the test is skipped with a message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from kdlab.tune import make_storage  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
PG_URL = os.environ.get("KDLAB_PG_URL")

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not PG_URL,
        reason="KDLAB_PG_URL is not set: no PostgreSQL server to share a study on "
        "(run scripts/ci-postgres.sh as root, or .ci/run, to get one)",
    ),
]

RECIPE = {
    "name": "pg",
    "seed": 0,
    "data": {"name": "digits", "batch_size": 50, "per_class": 10},
    "student": {"name": "mlp", "kwargs": {"hidden": [16]}},
    "distill": {"terms": [{"method": "ce"}]},
    "train": {
        "epochs": 2,
        "optimizer": {"lr": 0.1},
        "schedule": {"name": "constant"},
        "progress": False,
        "device": "cpu",
        "threads": 1,
    },
}
SPACE = {"train.optimizer.lr": {"type": "loguniform", "low": 0.01, "high": 0.5}}
TRIALS = 4


def test_two_workers_share_a_postgres_study(tmp_path: Path) -> None:
    assert PG_URL is not None
    study_name = f"kdlab-test-{uuid.uuid4().hex[:10]}"
    (tmp_path / "recipe.yaml").write_text(
        yaml.safe_dump({**RECIPE, "output_dir": str(tmp_path / "runs")})
    )
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "kdlab", "tune", str(tmp_path / "recipe.yaml")]
    cmd += ["--space", str(tmp_path / "space.yaml"), "--storage", PG_URL, "--study", study_name]
    cmd += ["--trials", str(TRIALS), "--workers", "2", "--out", str(out), "--no-prune"]
    storage = make_storage(PG_URL)
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        study = optuna.load_study(study_name=study_name, storage=storage)
        trials = study.get_trials()
        # Every trial ran once, to the end, in one of the two workers.
        assert sorted(t.number for t in trials) == list(range(TRIALS))
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        log = [json.loads(x) for x in (out / "trials.log").read_text().splitlines()]
        assert Counter(r["trial"] for r in log) == Counter(range(TRIALS))
        by_trial = {r["trial"]: r["worker"] for r in log}
        assert {t.number: t.user_attrs["worker"] for t in trials} == by_trial
        assert len(set(by_trial.values())) == 2  # both workers took trials
        for t in trials:
            assert (Path(t.user_attrs["run_dir"]) / "results.json").is_file()
        summary = json.loads(proc.stdout[proc.stdout.index("{") :])
        assert summary["trials"] == TRIALS and summary["failed_workers"] == 0
        assert summary["best_value"] == max(t.value for t in trials)
        assert "kdlab:***@" in summary["storage"] or "@" not in summary["storage"]
    finally:
        try:
            optuna.delete_study(study_name=study_name, storage=storage)
        except KeyError:
            pass
