"""End-to-end runs on digits: training, selection, resume, stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from kdlab.config import load_config
from kdlab.engine import train
from kdlab.engine.checkpoint import load_weights
from kdlab.engine.handlers import ReportProgress


class Interrupt(Exception):
    pass


def recipe(tmp: Path, name: str, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "output_dir": str(tmp),
        "student": {"name": "cnn_tiny"},
        "data": {"per_class": 20, "batch_size": 32},
        "train": {"epochs": 2, "progress": False, "schedule": {"name": "cosine"}},
    }
    base.update(over)
    return base


def test_two_epoch_run_writes_everything(tmp_path: Path) -> None:
    res = train(load_config(recipe(tmp_path, "a")))
    run = Path(res.run_dir)
    for f in ["config.yaml", "env.json", "metrics.jsonl", "results.json", "model.safetensors"]:
        assert (run / f).is_file(), f
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0 <= r["val_acc1"] <= 100 for r in rows)
    saved = json.loads((run / "results.json").read_text())
    assert saved["selection"] == "best-val"
    assert saved["best_epoch"] == max(rows, key=lambda r: r["val_acc1"])["epoch"]
    assert saved["test_acc_best"] == res.test_acc_best
    assert json.loads((run / "env.json").read_text())["versions"]["torch"]


def test_same_seed_same_weights(tmp_path: Path) -> None:
    a = train(load_config(recipe(tmp_path, "a")))
    b = train(load_config(recipe(tmp_path, "b")))
    wa, wb = (
        load_weights(Path(a.run_dir) / "last.safetensors"),
        load_weights(Path(b.run_dir) / "last.safetensors"),
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("stop_at", [5, 9])  # mid-epoch and right after an epoch's end
def test_interrupted_run_resumes_to_identical_weights(tmp_path: Path, stop_at: int) -> None:
    over = {
        "data": {"per_class": 20, "batch_size": 32, "augment": {"crop_padding": 1}},
        "train": {"epochs": 3, "progress": False, "checkpoint_every": 2},
    }
    full = train(load_config(recipe(tmp_path, "full", **over)))

    def boom(stage: str, it: int, total: int) -> None:
        if it == stop_at:
            raise Interrupt

    cfg = load_config(recipe(tmp_path, "cut", **over))
    with pytest.raises(Interrupt):
        train(cfg, handlers=[ReportProgress(boom)])
    resumed = train(cfg, resume=True)
    wa = load_weights(Path(full.run_dir) / "last.safetensors")
    wb = load_weights(Path(resumed.run_dir) / "last.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed.test_acc_best == full.test_acc_best


def test_kd_run_with_teacher_file(tmp_path: Path, digits_teacher: Path) -> None:
    cfg = load_config(
        recipe(
            tmp_path,
            "kd",
            teacher={"name": "cnn_medium", "checkpoint": str(digits_teacher)},
            distill={"terms": [{"method": "ce", "weight": 0.1}, {"method": "kd"}]},
        )
    )
    res = train(cfg)
    rows = [json.loads(x) for x in (Path(res.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train_kd"] > 0 and rows[0]["train_ce"] > 0
    assert rows[0]["train_loss"] == pytest.approx(rows[0]["train_kd"] + rows[0]["train_ce"])


def test_prestage_trains_only_what_it_names(tmp_path: Path, digits_teacher: Path) -> None:
    # A pre-stage driven by the kd loss that trains nothing but the classifier.
    cfg = load_config(
        recipe(
            tmp_path,
            "staged",
            teacher={"name": "cnn_medium", "checkpoint": str(digits_teacher)},
            distill={
                "terms": [{"method": "ce"}, {"method": "kd"}],
                "stages": [
                    {"name": "head", "epochs": 1, "losses": {"kd": 1.0}, "train": ["student.fc"]}
                ],
            },
        )
    )
    from kdlab.engine import Trainer  # noqa: PLC0415

    trainer = Trainer(cfg)
    trainer.run_dir.create()
    before = {k: v.clone() for k, v in trainer.distiller.student.state_dict().items()}
    assert [s.name for s in trainer.stages] == ["head", "main"]
    trainer.run_stage(0, trainer.stages[0], None)
    after = trainer.distiller.student.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(
        k.startswith("fc.") or "running" in k or "num_batches" in k for k in changed
    )
    assert any(k.startswith("fc.") for k in changed)
    rows = trainer.run_dir.read_metrics()
    assert rows[-1]["stage"] == "head" and "train_kd" in rows[-1] and "train_ce" not in rows[-1]
