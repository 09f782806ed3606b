"""Streaming splits through the engine: ``train()`` on a generated JPEG tree with workers.

The ``imagenet`` dataset streams a tree of real JPEGs (made from the bundled digits, 10
classes, 32x32) with 2 DataLoader workers, the random resized crop and flip on. A run
killed mid-epoch (an exception after a chosen step, as in test_resume.py) and resumed
ends with the same weights, metrics rows and results as one uninterrupted run: the
samples' augmentation is seeded by ``(seed, epoch, index)`` and the resumed loader skips
the batches the checkpoint covered. A streaming split has no ``x`` tensor, so these runs
also show that nothing in the engine reads one.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kdlab.cli import main
from kdlab.config import load_config
from kdlab.data import build_dataset
from kdlab.data.imagetree import make_image_tree
from kdlab.data.stream import StreamingSplit
from kdlab.engine import train
from kdlab.engine.handlers import ReportProgress
from kdlab.engine.runner import Trainer
from kdlab.errors import ConfigError, DataError


class Killed(Exception):
    pass


def _recipe(root: Path, **options: Any) -> dict[str, Any]:
    return {
        "name": "stream",
        "seed": 3,
        "data": {
            "name": "imagenet",
            "root": str(root),
            "batch_size": 16,  # 80 training images (20 held out for selection): 5 batches
            "eval_batch_size": 32,
            "val_fraction": 0.2,
            "options": {"image_size": 24, "resize": 28, "workers": 2, "stream": True, **options},
        },
        "student": {"name": "cnn_tiny"},
        "teacher": {"name": "cnn_tiny"},  # untrained: only its outputs' flow matters here
        "distill": {"terms": [{"method": "ce", "weight": 0.5}, {"method": "kd", "weight": 0.5}]},
        "train": {
            "epochs": 2,
            "checkpoint_every": 2,
            "progress": False,
            "threads": 1,
            "optimizer": {"lr": 0.1},
        },
    }


def _outputs(run_dir: Path) -> dict[str, Any]:
    """What a finished run leaves, less its folder name and timings."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((run_dir / "results.json").read_text())
    for volatile in ("run_dir", "wall_time_s"):
        results.pop(volatile)
    return {
        "rows": [{k: v for k, v in row.items() if k != "time"} for row in rows],
        "results": results,
        "weights": load_file(str(run_dir / "last.safetensors")),
        "model": load_file(str(run_dir / "model.safetensors")),
    }


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert (got["rows"], got["results"]) == (want["rows"], want["results"])
    for name in ("weights", "model"):
        assert got[name].keys() == want[name].keys()
        for key, value in want[name].items():
            assert torch.equal(got[name][key], value), f"{name}: {key} differs"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    return make_image_tree(root, size=32, splits={"train": 10, "val": 2})


def _run(recipe: dict, run_dir: Path, resume: bool = False, kill_at: int | None = None) -> None:
    def progress(stage: str, iteration: int, total: int) -> None:
        if iteration == kill_at:
            raise Killed

    try:
        train(load_config(recipe), run_dir, resume=resume, handlers=[ReportProgress(progress)])
    except Killed:
        pass


@pytest.fixture(scope="module")
def reference(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run_dir = tmp_path_factory.mktemp("reference")
    _run(_recipe(tree), run_dir)
    # The run stopped its loaders' workers (left to the garbage collector, a trainer's
    # persistent workers took 5 s each to stop).
    assert not multiprocessing.active_children()
    out = _outputs(run_dir)
    assert [r["epoch"] for r in out["rows"]] == [1, 2]
    return out


# 5 iterations an epoch, checkpoints at 2, 4, 5 (epoch end), 6, 8, 10.
@pytest.mark.parametrize("kill_at", [3, 7])
def test_streamed_run_killed_mid_epoch_resumes_bit_exact(
    tree: Path, reference: dict[str, Any], tmp_path: Path, kill_at: int
) -> None:
    _run(_recipe(tree), tmp_path, kill_at=kill_at)
    assert not (tmp_path / "results.json").exists()
    assert not multiprocessing.active_children()  # stopped on the way out, too
    _run(_recipe(tree), tmp_path, resume=True)
    _assert_same(_outputs(tmp_path), reference)


@pytest.mark.slow  # one `kdlab train` process: ~5 s on 2 free cores
def test_streamed_run_sigkilled_with_its_workers_resumes_bit_exact(
    tree: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    """A real SIGKILL: no handler runs, the worker processes are orphaned mid-batch."""
    recipe = tmp_path / "stream.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(tree)))
    run_dir = tmp_path / "run"
    src = Path(__file__).resolve().parents[2] / "src"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdlab", "train", str(recipe), "--run-dir", str(run_dir)],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(src)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    checkpoint = run_dir / "checkpoints" / "step-000000006" / "meta.json"  # mid-epoch 2
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (run_dir / "results.json").exists()
    with pytest.warns(UserWarning, match="no longer running"):  # the lock of the killed run
        _run(_recipe(tree), run_dir, resume=True)
    _assert_same(_outputs(run_dir), reference)


def test_the_trainer_streams_with_the_splits_worker_options(tree: Path) -> None:
    trainer = Trainer(load_config(_recipe(tree, workers=1, prefetch=3)), "unused")
    assert isinstance(trainer.data.train, StreamingSplit)
    assert not hasattr(trainer.data.train, "x")  # nothing may read a tensor of inputs
    for loader in (trainer.train_loader, trainer.val_loader):
        assert (loader.workers, loader.spec.prefetch) == (1, 3)
    assert len(trainer.train_loader) == 5 and len(trainer.val_loader) == 1


def test_teacher_cache_refuses_a_random_per_sample_transform(tree: Path) -> None:
    recipe = _recipe(tree)
    recipe["train"]["cache_teacher"] = True
    with pytest.raises(ConfigError, match=r"random transform \(data.options.train_transform\)"):
        Trainer(load_config(recipe), "unused")
    # Without augmentation a sample reads the same every epoch: the cache is exact.
    recipe["data"]["options"]["train_transform"] = "eval"
    assert Trainer(load_config(recipe), "unused").distiller._teacher_cache is not None


def test_the_data_distillation_pipeline_refuses_a_streamed_split(tree: Path) -> None:
    from kdlab.pipelines.data_distillation import DataDistillationConfig, run_data_distillation

    recipe = _recipe(tree)
    recipe.pop("teacher")
    recipe["distill"] = {}
    cfg = DataDistillationConfig.model_validate({"run": recipe})
    with pytest.raises(DataError, match="data-distillation pipeline needs the dataset's images"):
        run_data_distillation(cfg, "unused", bundle=build_dataset(load_config(recipe).data))


wds = pytest.importorskip("webdataset", reason="shards need the 'shards' extra")


def test_sharded_run_killed_mid_epoch_resumes_bit_exact(tree: Path, tmp_path: Path) -> None:
    """The same run read from WebDataset shards: every epoch has one batch count (the
    shards' validation carve-out makes them unequal), and resume is exact."""
    shards = tmp_path / "shards"
    assert main(["data", "shard", str(tree), str(shards), "--per-shard", "9"]) == 0
    recipe = _recipe(shards, shuffle_buffer=20)
    _run(recipe, tmp_path / "reference")
    want = _outputs(tmp_path / "reference")
    _run(recipe, tmp_path / "killed", kill_at=6)
    _run(recipe, tmp_path / "killed", resume=True)
    _assert_same(_outputs(tmp_path / "killed"), want)
