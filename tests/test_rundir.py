"""The run folder: layout, fingerprint, refusals, the lock, tolerant readers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kdlab.cli import main
from kdlab.config import load_recipe
from kdlab.engine import train
from kdlab.errors import CheckpointError, RunFolderError
from kdlab.rundir import VOLATILE, RunDir, changed_keys, defining_keys, fingerprint
from proc_helpers import interrupted

SRC = Path(__file__).resolve().parents[1] / "src"


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


# ---------------------------------------------------------------- weights a recipe names


def _teacher_from(source: Path | str) -> None:
    from kdlab.engine import load_model  # noqa: PLC0415

    load_model("cnn_tiny", {}, str(source), 10, 1, key="teacher.checkpoint")


def test_a_training_checkpoint_as_teacher_gets_the_right_hint(finished: Path) -> None:
    run = finished / "r"
    step = sorted((run / "checkpoints").iterdir())[-1]
    for given in (step, step / "model.safetensors", run / "checkpoints"):
        with pytest.raises(CheckpointError) as info:
            _teacher_from(given)
        assert str(info.value) == (
            f"teacher.checkpoint {str(given)!r} is a training checkpoint (the student and the "
            f"terms' adapters, for resuming run {str(run)!r}), not a model's weights; give the "
            f"run folder itself (teacher.checkpoint={run})"
        )
    _teacher_from(run)  # the hint works


def test_an_unfinished_teacher_run_points_to_best_or_resume(finished: Path, tmp_path: Path) -> None:
    run = tmp_path / "killed"
    shutil.copytree(finished / "r", run)
    for name in ("results.json", "model.safetensors", "last.safetensors"):
        (run / name).unlink()  # as a kill before the end leaves it
    step = sorted((run / "checkpoints").iterdir())[-1]
    finish = f"finish it with `kdlab train {run / 'config.yaml'} --run-dir {run} --resume`"
    for given, start in [
        (run, f"{str(run)!r} is a run that has not finished (no model.safetensors); "),
        (step, f"{str(step)!r} is a training checkpoint"),
    ]:
        with pytest.raises(CheckpointError) as info:
            _teacher_from(given)
        message = str(info.value)
        assert message.startswith(f"teacher.checkpoint {start}")
        assert message.endswith(
            f"its best epoch so far (teacher.checkpoint={run / 'best.safetensors'}), or "
            f"{finish} and give its folder"
        )
    _teacher_from(run / "best.safetensors")  # the hint works
    (run / "best.safetensors").unlink()  # killed before its first epoch ended
    with pytest.raises(CheckpointError, match=r"no epoch has finished: no best.safetensors"):
        _teacher_from(run)


# ---------------------------------------------------------------- resume and the CLI


def _write(tmp: Path, data: dict[str, Any]) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_resume_needs_a_run_and_resume_or_start_starts_one(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    recipe = _write(tmp_path, _recipe(tmp_path))
    run = tmp_path / "r"
    assert main(["train", str(recipe), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"kdlab: error: nothing to resume in {str(run)!r}: it holds no run (no config.yaml); "
        "start it without --resume (resume=False), or use --resume-or-start to resume only "
        "when there is a run\n"
    )
    assert not run.exists()  # nothing written, not even the folder
    with pytest.raises(RunFolderError, match="nothing to resume"):
        train(load_recipe(_recipe(tmp_path)), resume=True)  # the Python API alike
    assert main(["train", str(recipe), "--resume-or-start"]) == 0  # no run: starts it
    assert main(["train", str(recipe), "train.epochs=2", "--resume-or-start"]) == 0  # resumes
    assert [r["epoch"] for r in RunDir(run).read_metrics()] == [1, 2]


def test_an_at_recipe_cannot_resume_a_kd_run_and_the_run_still_evaluates(
    tmp_path: Path, digits_teacher: Path, capsys: pytest.CaptureFixture
) -> None:
    small = [
        f"teacher.checkpoint={digits_teacher}",
        "train.epochs=1",
        "train.progress=false",
        "train.threads=1",
        "data.per_class=4",
    ]
    run = tmp_path / "kd"
    assert main(["train", "digits/kd", *small, "--run-dir", str(run)]) == 0
    capsys.readouterr()
    before = _snapshot(run)
    assert main(["train", "digits/at", *small, "--run-dir", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kdlab: error: cannot resume {str(run)!r} with another recipe ")
    assert "distill.terms: [{" in err and len(err.splitlines()) == 1
    assert _snapshot(run) == before  # config.yaml included, byte for byte
    assert main(["eval", str(run)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["acc1"] == pytest.approx(RunDir(run).read_results()["test_best"]["acc1"])


def test_a_second_process_cannot_write_a_running_run(tmp_path: Path) -> None:
    """Two processes: a run trains in a subprocess; a fresh run and a resume of the same
    folder are refused while it holds the lock."""
    data = _recipe(tmp_path, epochs=10_000)
    recipe = _write(tmp_path, data)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdlab", "train", str(recipe)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # SIGINT as from a terminal, also when pytest runs as a shell's background job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )
    rd = RunDir(tmp_path / "r")
    try:
        deadline = time.monotonic() + 180
        while not rd.has_config() and proc.poll() is None:  # written once it holds the lock
            assert time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        config = (rd.path / rd.CONFIG).read_bytes()
        for resume in (False, True):
            with pytest.raises(RunFolderError, match=f"in use by pid {proc.pid} on this host"):
                train(load_recipe(data), resume=resume, overwrite=not resume)
        assert (rd.path / rd.CONFIG).read_bytes() == config
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            err = proc.communicate(timeout=120)[1]
        finally:
            proc.kill()
    assert interrupted(proc.returncode, err), err
    assert not (rd.path / rd.LOCK).exists()  # released on the way out


def test_ctrl_c_while_pruning_checkpoints_is_an_interrupt_not_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C inside shutil.rmtree can make its cleanup close a directory fd twice
    (Python 3.11, between ``os.close(dirfd)`` and ``dirfd_closed = True``): the EBADF
    OSError then carries the KeyboardInterrupt as its context. Seen once in 40 SIGINTs
    to ``kdlab train``, which reported "cannot write checkpoint ... (Bad file
    descriptor)" and exited 2. It must stay a Ctrl-C, with the new checkpoint intact."""
    import torch  # noqa: PLC0415

    from kdlab.engine import checkpoint as ckpt  # noqa: PLC0415

    rd = RunDir(tmp_path / "r")
    rd.create()
    for step in (1, 2):
        rd.save_checkpoint(step, {"w": torch.full((2,), float(step))}, {"iteration": step})
    real_rmtree = shutil.rmtree

    def interrupted_rmtree(path: Any, ignore_errors: bool = False) -> None:
        closed = os.open(path, os.O_RDONLY)
        os.close(closed)
        try:
            raise KeyboardInterrupt
        finally:
            os.close(closed)  # the second close: OSError(EBADF), KeyboardInterrupt its context

    monkeypatch.setattr(ckpt.shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt):
        rd.save_checkpoint(3, {"w": torch.full((2,), 3.0)}, {"iteration": 3})
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    newest = ckpt.list_checkpoints(rd.checkpoints)[-1]
    assert newest.name == "step-000000003"
    assert ckpt.load_weights(newest / "model.safetensors")["w"].tolist() == [3.0, 3.0]

    def failed_rmtree(path: Any, ignore_errors: bool = False) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.shutil, "rmtree", failed_rmtree)
    with pytest.raises(RunFolderError, match="No space left on device"):  # no Ctrl-C behind it
        rd.save_checkpoint(4, {"w": torch.full((2,), 4.0)}, {"iteration": 4})
