"""Data-parallel training on CPU: 2 gloo processes against one process.

The recipe is the same for both: ``data.batch_size`` 64 is the global batch (2 ranks x 32
vs 1 x 64). The student and teacher are MLPs (no BatchNorm, whose per-rank batch
statistics would differ from the global batch's; no dropout) and augmentation is off, so
the two runs compute the same gradients up to float summation order. Tolerance: the
weights after 3 epochs (a 1-epoch pre-stage + 2 main epochs, 60 steps) agree to 1e-4.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kdlab.config import load_config
from kdlab.data import TensorSplit, make_loader
from kdlab.engine import distributed as dist
from kdlab.engine import train
from kdlab.errors import ConfigError
from proc_helpers import interrupted

SRC = Path(__file__).resolve().parents[2] / "src"
TOL = 1e-4


def recipe(out: Path) -> dict:
    return {
        "name": "ddp",
        "seed": 3,
        "output_dir": str(out),
        "data": {"name": "digits", "batch_size": 64},
        "student": {"name": "mlp", "kwargs": {"hidden": [64, 32]}},
        # A randomly initialised teacher: the same on every rank (same seed), never trained.
        "teacher": {"name": "mlp", "kwargs": {"hidden": [128]}},
        "distill": {
            "terms": [{"method": "ce"}, {"method": "kd"}],
            # A pre-stage re-wraps DDP around a different trainable set.
            "stages": [
                {"name": "warm", "epochs": 1, "losses": {"ce": 1.0}, "train": ["student.fc"]}
            ],
        },
        "train": {
            "epochs": 2,
            "optimizer": {"lr": 0.1},
            "schedule": {"name": "cosine"},
            "progress": False,
            "device": "cpu",
            "threads": 1,
            "precision": "fp32",  # bf16 would round differently on half batches
        },
    }


def _kdlab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "kdlab", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ddp")
    cfg_path = tmp / "recipe.yaml"
    cfg_path.write_text(yaml.safe_dump(recipe(tmp)))
    single = tmp / "single"
    train(load_config(cfg_path), run_dir=single)
    ddp = tmp / "ddp"
    proc = _kdlab("train", str(cfg_path), "--run-dir", str(ddp), "--nproc", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"cfg": cfg_path, "single": single, "ddp": ddp, "stdout": proc.stdout}


def test_ddp_two_ranks_match_one_process(runs: dict) -> None:
    single, ddp = runs["single"], runs["ddp"]
    for name in ("last.safetensors", "model.safetensors"):
        assert _max_diff(load_file(single / name), load_file(ddp / name)) < TOL
    # Reduced metrics: the train loss (mean over both ranks' batches) and the sharded
    # validation accuracy equal the single process's.
    a, b = _rows(single), _rows(ddp)
    assert [(r["stage"], r["epoch"]) for r in a] == [(r["stage"], r["epoch"]) for r in b]
    assert [r["stage"] for r in b] == ["warm", "main", "main"]
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], abs=1e-5)
        assert rb["train_acc"] == pytest.approx(ra["train_acc"], abs=1e-9)
        assert rb["val_acc1"] == pytest.approx(ra["val_acc1"], abs=1e-9)
    env = json.loads((ddp / "env.json").read_text())
    assert env["world_size"] == 2
    # Rank 0 alone printed the result and wrote the report.
    assert runs["stdout"].count('"run_dir"') == 1
    res = json.loads((ddp / "results.json").read_text())
    assert res["test_acc_last"] == pytest.approx(
        json.loads((single / "results.json").read_text())["test_acc_last"]
    )


@pytest.mark.slow
def test_ddp_resume_continues_a_run(runs: dict, tmp_path: Path) -> None:
    # Drop the newest checkpoint (end of main epoch 2): the resumed 2-process run
    # replays epoch 2 from epoch 1's state and lands on the uninterrupted weights.
    run = tmp_path / "resumed"
    shutil.copytree(runs["ddp"], run)
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    shutil.rmtree(ckpts[-1])
    (run / "last.safetensors").unlink()
    proc = _kdlab("train", str(runs["cfg"]), "--run-dir", str(run), "--nproc", "2", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    diff = _max_diff(
        load_file(runs["single"] / "last.safetensors"), load_file(run / "last.safetensors")
    )
    assert diff < TOL
    assert [(r["stage"], r["epoch"]) for r in _rows(run)][-1] == ("main", 2)


def test_rank_shards_make_up_the_global_batch() -> None:
    split = TensorSplit(torch.arange(203.0)[:, None], torch.zeros(203, dtype=torch.long))
    one = make_loader(split, 64, train=True, seed=5)
    ranks = [make_loader(split, 32, train=True, seed=5, rank=r, world_size=2) for r in (0, 1)]
    for loader in (one, *ranks):
        loader.set_epoch(4)
    assert len(one) == len(ranks[0]) == 3
    for (x1, *_), (xa, *_), (xb, *_) in zip(one, *ranks):
        assert sorted(x1.flatten().tolist()) == sorted(torch.cat([xa, xb]).flatten().tolist())


def test_global_batch_must_divide_over_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist, "world_size", lambda: 3)
    assert dist.per_rank_batch(96) == 32
    with pytest.raises(ConfigError, match="batch_size 64 .* 3 processes"):
        dist.per_rank_batch(64)


def test_backend_choice() -> None:
    assert dist.backend_for("cpu") == "gloo"
    expected = "nccl" if torch.cuda.is_available() else "gloo"
    assert dist.backend_for("auto") == expected


# ---------------------------------------------------------------- errors and interrupts


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "teacher.checkpoint=/nonexistent/t.safetensors",
            "weights file '/nonexistent/t.safetensors'",
        ),
        ("student.name=mpl", "unknown model 'mpl'; did you mean 'mlp'"),
        ("data.name=digts", "unknown dataset 'digts'; did you mean 'digits'"),
        ("data.options.root=x", "data.options.root: not an option of dataset 'digits'"),
        ("data.batch_size=63", "data.batch_size 63 is the global batch and must divide evenly"),
    ],
)
def test_a_recipe_error_is_one_line_before_any_process_starts(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    override: str,
    message: str,
) -> None:
    from kdlab.cli import main  # noqa: PLC0415

    def no_spawn(*_: object, **__: object) -> None:
        raise AssertionError("processes were spawned for a recipe with an error")

    monkeypatch.setattr(dist, "launch", no_spawn)
    cfg_path = tmp_path / "recipe.yaml"
    cfg_path.write_text(yaml.safe_dump(recipe(tmp_path)))
    assert main(["train", str(cfg_path), override, "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kdlab: error: {message}") and len(err.splitlines()) == 1, err


def test_a_worker_error_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """What only a worker can find (here a model's kwargs) is one line from the launcher,
    which is this process (the workers write to the same stderr)."""
    from kdlab.cli import main  # noqa: PLC0415

    monkeypatch.setenv("PYTHONPATH", str(SRC))  # what the spawned workers import
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg_path = tmp_path / "recipe.yaml"
    cfg_path.write_text(yaml.safe_dump(recipe(tmp_path)))
    code = main(["train", str(cfg_path), "student.kwargs.hidden=[-3]", "--nproc", "2"])
    err = capfd.readouterr().err
    assert code == 2
    assert err.startswith("kdlab: error: model 'mlp' with kwargs {'hidden': [-3]}: ")
    assert len(err.splitlines()) == 1, err


def _default_sigint() -> None:
    """In the child: SIGINT raises KeyboardInterrupt even when the test runs as a shell's
    background job (which starts with SIGINT ignored, and Python keeps it so)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_sigint_to_the_launcher_alone_stops_the_workers(tmp_path: Path) -> None:
    data = recipe(tmp_path)
    data["train"]["epochs"] = 10_000
    cfg_path = tmp_path / "recipe.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "kdlab", "train", str(cfg_path), "--nproc", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,  # noqa: PLW1509 - a shell's background job ignores SIGINT
    )
    run = tmp_path / "ddp"
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 240
        # config.yaml is written by rank 0 once it holds the run folder: both ranks are up.
        while not (run / "config.yaml").exists():
            assert launcher.poll() is None, launcher.stderr.read() if launcher.stderr else ""
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
        workers += _children(launcher.pid)
        assert len(workers) >= 2
        launcher.send_signal(signal.SIGINT)  # the launcher alone, not its process group
        _, err = launcher.communicate(timeout=120)
    finally:
        for pid in [launcher.pid, *workers]:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        launcher.wait()
    assert interrupted(launcher.returncode, err), err
    # Children of the launcher include multiprocessing's resource tracker, which exits on
    # its own once the launcher has gone: allow a moment for process teardown.
    deadline = time.monotonic() + 10
    while [pid for pid in workers if _running(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if _running(pid)]
