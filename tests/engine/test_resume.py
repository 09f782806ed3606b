"""Resume in-process: corrupted checkpoints, fallbacks, exact replay, metrics rows once.

A "kill" here is an exception raised from the progress callback at a chosen iteration:
deterministic, so each resume path (mid-epoch, epoch end, stage boundary, before the
first checkpoint) is tested every time. tests/test_crash.py does the same with SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from kdlab.config import load_config
from kdlab.data import build_dataset
from kdlab.engine import checkpoint as ckpt
from kdlab.engine import train
from kdlab.engine.handlers import ReportProgress
from kdlab.errors import CheckpointError

RECIPE: dict[str, Any] = {
    "name": "resume",
    "seed": 5,
    "data": {"name": "digits", "batch_size": 32, "per_class": 16},  # 160 images: 5 batches
    "student": {"name": "cnn_tiny"},
    "distill": {
        "terms": [{"method": "ce", "student_view": "noisy"}],
        "views": {"noisy": {"type": "gaussian_noise", "sigma": 0.05}},
        "stages": [{"name": "warm", "epochs": 1, "losses": {"ce": 1.0}}],
    },
    "train": {
        "epochs": 2,
        "checkpoint_every": 2,
        "progress": False,
        "optimizer": {"lr": 0.1},
        "schedule": {"name": "cosine"},
    },
}


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def bundle():  # noqa: ANN201 - built once: loading digits dominates a tiny run
    return build_dataset(load_config(RECIPE).data)


def _run(run_dir: Path, bundle: Any, resume: bool = False, kill_at: tuple | None = None) -> None:
    def progress(stage: str, iteration: int, total: int) -> None:
        if kill_at == (stage, iteration):
            raise Killed

    cfg = load_config(RECIPE)
    try:
        train(
            cfg,
            run_dir=run_dir,
            resume=resume,
            bundle=bundle,
            handlers=[ReportProgress(progress)],
        )
    except Killed:
        pass


def _outputs(run_dir: Path) -> dict[str, Any]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("time")
    res = json.loads((run_dir / "results.json").read_text())
    res.pop("run_dir")
    res.pop("wall_time_s")
    w = {n: load_file(str(run_dir / n)) for n in ("last.safetensors", "model.safetensors")}
    return {"rows": rows, "results": res, "weights": w}


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["rows"] == want["rows"]
    assert got["results"] == want["results"]
    for name, ref in want["weights"].items():
        for key, value in ref.items():
            assert torch.equal(got["weights"][name][key], value), (name, key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, bundle: Any) -> dict[str, Any]:
    run_dir = tmp_path_factory.mktemp("ref")
    _run(run_dir, bundle)
    out = _outputs(run_dir)
    assert [(r["stage"], r["epoch"]) for r in out["rows"]] == [
        ("warm", 1),
        ("main", 1),
        ("main", 2),
    ]
    return out


# Iterations are 1..5 (warm) and 1..10 (main); checkpoints every 2 and at epoch ends.
@pytest.mark.parametrize(
    "kill_at",
    [
        ("warm", 1),  # before the first checkpoint: resume starts afresh
        ("warm", 3),  # mid-epoch: loader.start_batch + Ignite's iteration counter
        ("main", 1),  # right after the stage boundary (the fresh_stage checkpoint)
        ("main", 5),  # at an epoch end, after metrics were written
        ("main", 7),  # mid-epoch in a later epoch
    ],
)
def test_kill_then_resume_equals_uninterrupted(
    tmp_path: Path, bundle: Any, reference: dict[str, Any], kill_at: tuple[str, int]
) -> None:
    _run(tmp_path, bundle, kill_at=kill_at)
    assert not (tmp_path / "results.json").exists()
    _run(tmp_path, bundle, resume=True)
    _assert_same(_outputs(tmp_path), reference)


def test_metrics_rows_after_the_checkpoint_are_dropped(
    tmp_path: Path, bundle: Any, reference: dict[str, Any]
) -> None:
    """A kill between writing an epoch's row and its checkpoint, with a cut last line."""
    _run(tmp_path, bundle, kill_at=("main", 9))
    metrics = tmp_path / "metrics.jsonl"
    rows = metrics.read_text().splitlines()
    assert len(rows) == 2  # warm 1, main 1
    # The killed run had also written main 2's row and half of a line.
    metrics.write_text("\n".join([*rows, rows[-1].replace('"epoch": 1', '"epoch": 2')]) + '\n{"st')
    _run(tmp_path, bundle, resume=True)
    got = _outputs(tmp_path)
    assert [(r["stage"], r["epoch"]) for r in got["rows"]] == [
        ("warm", 1),
        ("main", 1),
        ("main", 2),
    ]
    _assert_same(got, reference)


def test_corrupted_newest_checkpoint_warns_and_falls_back(
    tmp_path: Path, bundle: Any, reference: dict[str, Any], capsys: pytest.CaptureFixture
) -> None:
    _run(tmp_path, bundle, kill_at=("main", 9))
    newest, older = ckpt.list_checkpoints(tmp_path / "checkpoints")[::-1][:2]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    _run(tmp_path, bundle, resume=True)
    err = capsys.readouterr().out
    assert f"skipping bad checkpoint: checkpoint {str(newest)!r}: model.safetensors" in err
    assert "corrupted" in err
    _assert_same(_outputs(tmp_path), reference)


def _fake_checkpoints(folder: Path, n: int) -> list[Path]:
    return [
        ckpt.save_checkpoint(folder, s, {"w": torch.full((3,), float(s))}, {"iteration": s})
        for s in range(1, n + 1)
    ]


def test_fallback_order_and_messages(tmp_path: Path) -> None:
    ckpt.KEEP, keep = 3, ckpt.KEEP
    try:
        first, second, third = _fake_checkpoints(tmp_path, 3)
    finally:
        ckpt.KEEP = keep
    # A folder a kill left without meta.json is not a checkpoint: silently ignored.
    (tmp_path / "step-000000009").mkdir()
    (tmp_path / "step-000000009" / "model.safetensors").write_bytes(b"half")
    # Newest: state.pt flipped byte -> hash mismatch.
    state = third / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    # Second: truncated weights whose meta.json was rewritten to match (a bad copy):
    # the hash passes, safetensors itself refuses the file.
    w = second / "model.safetensors"
    w.write_bytes(w.read_bytes()[:20])
    meta = json.loads((second / "meta.json").read_text())
    meta["model.safetensors"] = ckpt._sha256(w)
    (second / "meta.json").write_text(json.dumps(meta))

    warnings: list[str] = []
    weights, st = ckpt.load_latest_checkpoint(tmp_path, warn=warnings.append)
    assert st["iteration"] == 1 and torch.equal(weights["w"], torch.full((3,), 1.0))
    assert len(warnings) == 2
    assert "step-000000003" in warnings[0] and "state.pt is corrupted" in warnings[0]
    assert "step-000000002" in warnings[1] and "not a readable safetensors" in warnings[1]

    shutil.rmtree(first)
    with pytest.raises(CheckpointError, match="no usable checkpoint") as info:
        ckpt.load_latest_checkpoint(tmp_path, warn=lambda _: None)
    assert "step-000000003" in str(info.value) and "step-000000002" in str(info.value)


def test_missing_meta_file_or_member(tmp_path: Path) -> None:
    (only,) = _fake_checkpoints(tmp_path, 1)
    (only / "state.pt").unlink()
    with pytest.raises(CheckpointError, match="state.pt is missing"):
        ckpt.load_latest_checkpoint(tmp_path, warn=lambda _: None)
    (only / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json unreadable"):
        ckpt.load_latest_checkpoint(tmp_path, warn=lambda _: None)


def test_resume_without_checkpoints_starts_afresh(tmp_path: Path) -> None:
    assert ckpt.load_latest_checkpoint(tmp_path / "none") is None


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path, monkeypatch: Any) -> None:
    target = tmp_path / "results.json"
    ckpt.atomic_write_text(target, "old")

    def boom(*_: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "replace", boom)
    with pytest.raises(OSError):
        ckpt.atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left


def test_atomic_writes_get_the_usual_file_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        ckpt.atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
