"""The run folder: layout, fingerprint, refusals, the lock, tolerant readers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kdlab.config import load_recipe
from kdlab.engine import train
from kdlab.errors import RunFolderError
from kdlab.rundir import VOLATILE, RunDir, changed_keys, defining_keys, fingerprint


def _recipe(tmp: Path, **train_over: Any) -> dict[str, Any]:
    return {
        "name": "r",
        "output_dir": str(tmp),
        "student": {"name": "cnn_tiny"},
        "data": {"per_class": 6, "batch_size": 30},
        "train": {"epochs": 1, "progress": False, "threads": 1, **train_over},
    }


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("done")
    train(load_recipe(_recipe(tmp)))
    return tmp


def test_layout_and_readers(finished: Path) -> None:
    rd = RunDir(finished / "r")
    assert rd.is_done() and rd.holds_run() and rd.has_config()
    assert rd.read_config().student.name == "cnn_tiny"
    assert rd.read_fingerprint()["sha256"] == fingerprint(rd.read_config())
    assert [r["epoch"] for r in rd.read_metrics()] == [1]
    assert rd.read_results()["selection"] == "best-val"
    assert set(rd.load_weights("last")) == set(rd.load_weights("model"))
    assert not (rd.path / rd.LOCK).exists()  # released at the end
    with pytest.raises(RunFolderError, match="no weights 'final'"):
        rd.weights_path("final")


def test_metrics_reader_skips_a_line_cut_by_a_kill(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    rd.append_metrics({"stage": "main", "epoch": 1})
    with open(tmp_path / rd.METRICS, "a") as f:
        f.write('{"stage": "main", "ep')
    assert rd.read_metrics() == [{"stage": "main", "epoch": 1}]


def test_fingerprint_ignores_exactly_the_volatile_keys() -> None:
    base = load_recipe(_recipe(Path("/x")))
    same = load_recipe(
        {**_recipe(Path("/elsewhere")), "name": "other"}, ["train.epochs=9", "train.threads=2"]
    )
    assert fingerprint(base) == fingerprint(same)
    for change in ["seed=1", "train.optimizer.lr=0.5", "data.batch_size=10"]:
        other = load_recipe(_recipe(Path("/x")), [change])
        assert fingerprint(other) != fingerprint(base), change
        assert changed_keys(defining_keys(base), defining_keys(other)) == [change.split("=")[0]]
    assert not any(k in defining_keys(base) for k in VOLATILE)


def test_fresh_run_refuses_a_folder_holding_a_run(finished: Path, tmp_path: Path) -> None:
    before = _snapshot(finished / "r")
    with pytest.raises(RunFolderError, match="holds a finished run; continue it with --resume"):
        train(load_recipe(_recipe(finished)))
    assert _snapshot(finished / "r") == before


def test_overwrite_replaces_the_run(tmp_path: Path) -> None:
    train(load_recipe(_recipe(tmp_path)))
    res = train(load_recipe(_recipe(tmp_path), ["seed=3"]), overwrite=True)
    assert RunDir(res.run_dir).read_config().seed == 3


def test_resume_with_another_recipe_is_refused_and_changes_nothing(finished: Path) -> None:
    before = _snapshot(finished / "r")
    cfg = load_recipe(_recipe(finished), ["seed=4", "train.optimizer.lr=0.2"])
    with pytest.raises(RunFolderError, match=r"another recipe \(seed: 0 -> 4, train.optimizer.lr"):
        train(cfg, resume=True)
    assert _snapshot(finished / "r") == before


def test_resume_may_change_volatile_keys(tmp_path: Path) -> None:
    train(load_recipe(_recipe(tmp_path)))
    res = train(load_recipe(_recipe(tmp_path, epochs=2)), resume=True)
    rows = RunDir(res.run_dir).read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2]
    assert RunDir(res.run_dir).read_config().train.epochs == 2


def test_a_live_lock_refuses_a_second_run(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "r")
    with rd.lock():
        held = json.loads((rd.path / rd.LOCK).read_text())
        assert held["pid"] == os.getpid()
        with pytest.raises(RunFolderError, match=f"in use by pid {os.getpid()} on this host"):
            train(load_recipe(_recipe(tmp_path)))
    assert not (rd.path / rd.LOCK).exists()


def test_a_stale_lock_is_reported_and_taken_over(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    rd = RunDir(tmp_path / "r")
    rd.create()
    import socket  # noqa: PLC0415

    (rd.path / rd.LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    with pytest.warns(UserWarning, match=f"locked by pid {pid}, which is no longer running"):
        train(load_recipe(_recipe(tmp_path)))
    assert rd.is_done() and not (rd.path / rd.LOCK).exists()


def test_a_lock_from_another_host_is_refused(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "r")
    rd.create()
    (rd.path / rd.LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(RunFolderError, match="in use by pid 1 on host 'elsewhere'.*delete"):
        train(load_recipe(_recipe(tmp_path)))
