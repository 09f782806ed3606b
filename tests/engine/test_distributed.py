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
import subprocess
import sys
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
