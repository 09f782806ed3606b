"""Kill-and-resume: a run SIGKILLed at random moments and resumed ends bit-identical.

Each trial launches ``python -m kdlab train RECIPE`` in a child process, kills it with
SIGKILL at a random moment of its training (seeded), relaunches it with ``--resume``,
kills it again, and finally lets a resumed run finish. The final weights, the metrics
rows and the reported numbers must equal those of one uninterrupted run, on CPU.

The recipe is small but exercises every resume path: a pre-stage (so a kill can land
at the stage boundary and resume from the ``fresh_stage`` checkpoint), mid-epoch
checkpoints (``checkpoint_every``: resume inside an epoch), augmentation and a noisy
view (random numbers that must be replayed exactly), and selection on validation.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

SRC = Path(__file__).resolve().parents[2] / "src"
TRIALS = 4  # each with KILLS kills, then a resumed run that finishes
KILLS = 2
SEED = 20261128

RECIPE = {
    "name": "crash",
    "seed": 7,
    "data": {
        "name": "digits",
        "batch_size": 32,
        "per_class": 24,  # 240 training images: 7 batches an epoch
        "augment": {"crop_padding": 1},
    },
    "student": {"name": "cnn_tiny"},
    "distill": {
        "terms": [{"method": "ce", "student_view": "noisy"}],
        "views": {"noisy": {"type": "gaussian_noise", "sigma": 0.05}},
        "stages": [{"name": "warm", "epochs": 1, "losses": {"ce": 1.0}}],
    },
    "train": {
        "epochs": 3,
        "checkpoint_every": 3,
        "progress": False,
        "threads": 1,
        "optimizer": {"lr": 0.1},
        "schedule": {"name": "cosine"},
    },
}


def _launch(recipe: Path, run_dir: Path, resume: bool) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "kdlab", "train", str(recipe), "--run-dir", str(run_dir)]
    if resume:
        cmd.append("--resume")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _newest_step(run_dir: Path) -> int:
    """The newest complete checkpoint's step (-1 for none)."""
    done = [p.name for p in (run_dir / "checkpoints").glob("step-*") if (p / "meta.json").exists()]
    return max((int(n.split("-")[1]) for n in done), default=-1)


def _checkpoint_steps() -> list[int]:
    """Every checkpoint step the recipe writes (stage index * 10^7 + iteration)."""
    per_epoch = 24 * 10 // RECIPE["data"]["batch_size"]
    every = RECIPE["train"]["checkpoint_every"]
    steps = []
    for index, epochs in enumerate([1, RECIPE["train"]["epochs"]]):
        for it in range(1, epochs * per_epoch + 1):
            if it % every == 0 or it % per_epoch == 0:
                steps.append(index * 10_000_000 + it)
    steps.insert(steps.index(per_epoch) + 1, per_epoch + 1)  # the fresh_stage checkpoint
    return steps


def _wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int) -> None:
    deadline = time.monotonic() + 120
    while _newest_step(run_dir) < step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


def _kill_after(proc: subprocess.Popen, run_dir: Path, step: int, delay: float) -> bool:
    """SIGKILL ``delay`` s after checkpoint ``step`` appears; False if it finished first."""
    _wait_for_step(proc, run_dir, step)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def _finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"kdlab train failed ({proc.returncode}):\n{err[-3000:]}"


def _outputs(run_dir: Path) -> dict:
    weights = {
        name: load_file(str(run_dir / name))
        for name in ("last.safetensors", "model.safetensors", "best.safetensors")
    }
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("time")
    results = json.loads((run_dir / "results.json").read_text())
    for volatile in ("run_dir", "wall_time_s"):
        results.pop(volatile)
    return {"weights": weights, "rows": rows, "results": results}


def _trial(recipe: Path, run_dir: Path, step_time: float, rng: random.Random) -> list[str]:
    """Kill KILLS times at random moments, then finish; return where each kill landed.

    A kill point is "a random delay of up to 3 steps after checkpoint S appeared", S
    drawn from the checkpoints still ahead, so kills spread over the whole run: inside
    a step, inside a checkpoint write, at an epoch's evaluation, at a stage boundary.
    """
    landed = []
    for k in range(KILLS + 1):
        proc = _launch(recipe, run_dir, resume=k > 0)
        if k == KILLS:
            _finish(proc)
            break
        ahead = [s for s in _checkpoint_steps() if s > _newest_step(run_dir)]
        step = rng.choice(ahead[:-1]) if len(ahead) > 1 else -1
        if _kill_after(proc, run_dir, step, rng.uniform(0.0, 3 * step_time)):
            landed.append(f"after step {step}, newest step {_newest_step(run_dir)}")
        else:
            _finish(proc)
            landed.append("finished before the kill")
    return landed


def _assert_same(got: dict, want: dict) -> None:
    for name, ref in want["weights"].items():
        assert got["weights"][name].keys() == ref.keys(), name
        for key, value in ref.items():
            assert torch.equal(got["weights"][name][key], value), f"{name}: {key} differs"
    assert got["rows"] == want["rows"]
    assert got["results"] == want["results"]


@pytest.mark.slow  # ~13 interpreter launches: ~80 CPU-seconds, ~45 s on 2 free cores
def test_sigkill_at_random_points_then_resume_is_exact(tmp_path: Path) -> None:
    recipe = tmp_path / "crash.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "output_dir": str(tmp_path / "runs")}))

    ref_dir = tmp_path / "reference"
    proc = _launch(recipe, ref_dir, resume=False)
    _wait_for_step(proc, ref_dir, _checkpoint_steps()[0])
    started = time.monotonic()
    _finish(proc)
    # Seconds per step here (training, checkpoints, evaluation and exit included).
    step_time = (time.monotonic() - started) / (4 * 7)
    want = _outputs(ref_dir)
    assert len(want["rows"]) == 4  # 1 warm-up epoch + 3 main epochs, once each

    rng = random.Random(SEED)
    seeds = [rng.randrange(2**32) for _ in range(TRIALS)]
    dirs = [tmp_path / f"trial{i}" for i in range(TRIALS)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        landed = list(
            pool.map(
                lambda i: _trial(recipe, dirs[i], step_time, random.Random(seeds[i])),
                range(TRIALS),
            )
        )
    for run_dir, where in zip(dirs, landed):
        got = _outputs(run_dir)
        try:
            _assert_same(got, want)
        except AssertionError as err:
            raise AssertionError(f"{run_dir.name} (killed at {where}) differs: {err}") from err
    kills = [w for ws in landed for w in ws if w != "finished before the kill"]
    print(f"kill points: {landed}")
    # The kills must really have interrupted training, not only the tail end.
    assert len(kills) >= TRIALS * KILLS // 2, landed
