"""Precision and memory format: bf16 autocast tracks fp32, ``auto`` picks the fast path
only on hardware with native bf16, channels_last for conv nets, and the defaults still
resume bit-exactly."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from kdlab.config import load_config
from kdlab.engine import Trainer, train
from kdlab.engine import step as step_mod
from kdlab.engine.handlers import ReportProgress
from kdlab.errors import ConfigError
from kdlab.rundir import RunDir


def _cfg(tmp: Path, **train_over: Any):
    return load_config(
        {
            "name": "p",
            "seed": 1,
            "output_dir": str(tmp),
            "data": {"name": "digits", "batch_size": 32, "per_class": 10},
            "student": {"name": "cnn_small"},
            "teacher": {"name": "cnn_tiny"},
            "distill": {"terms": [{"method": "ce"}, {"method": "kd"}]},
            "train": {
                "epochs": 2,
                "optimizer": {"lr": 0.05},
                "schedule": {"name": "constant"},
                "progress": False,
                "device": "cpu",
                **train_over,
            },
        }
    )


def _train(tmp: Path, precision: str) -> tuple[list[dict], set[torch.dtype]]:
    trainer = Trainer(_cfg(tmp, precision=precision), run_dir=tmp / precision)
    seen: set[torch.dtype] = set()
    trainer.distiller.student.fc.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    result = trainer.run()
    return result.history, seen


def test_bf16_on_cpu_trains_close_to_fp32(tmp_path: Path) -> None:
    fp32, dtypes32 = _train(tmp_path, "fp32")
    bf16, dtypes16 = _train(tmp_path, "bf16")
    assert torch.bfloat16 in dtypes16  # autocast really ran the student in bf16
    assert dtypes32 == {torch.float32}
    for a, b in zip(fp32, bf16):
        assert math.isfinite(b["train_loss"])
        # bf16 keeps 8 mantissa bits: per-step losses drift by well under 5 %.
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)
    assert bf16[-1]["train_loss"] < bf16[0]["train_loss"]  # and it learns


def test_auto_is_bf16_only_with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(step_mod, "native_bf16", lambda device: True)
    assert step_mod.Precision("auto", cpu).dtype == torch.bfloat16
    monkeypatch.setattr(step_mod, "native_bf16", lambda device: False)
    assert step_mod.Precision("auto", cpu).dtype is None  # fp32
    assert step_mod.Precision("fp32", cpu).name == "fp32"


def test_fp16_needs_cuda(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("fp16 is valid here (CUDA present)")
    with pytest.raises(ConfigError, match="fp16.*bf16"):
        Trainer(_cfg(tmp_path, precision="fp16"), run_dir=tmp_path / "x")


def test_amp_is_the_old_name_of_precision(tmp_path: Path) -> None:
    assert _cfg(tmp_path, amp="off").train.precision == "fp32"
    assert _cfg(tmp_path, amp="bf16").train.precision == "bf16"
    with pytest.raises(ConfigError, match="train.amp 'bf16' and train.precision 'fp32'"):
        _cfg(tmp_path, amp="bf16", precision="fp32")
    assert "amp" not in _cfg(tmp_path, amp="bf16").train.model_dump()


def test_channels_last_auto_for_conv_nets_only(tmp_path: Path) -> None:
    conv = Trainer(_cfg(tmp_path), run_dir=tmp_path / "a")
    assert conv.channels_last
    w = conv.distiller.student.stages[1].conv.weight  # (the first has 1 input channel)
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    cfg = _cfg(tmp_path)
    cfg.student.name, cfg.teacher.name = "mlp", "mlp"
    assert not Trainer(cfg, run_dir=tmp_path / "b").channels_last
    assert not Trainer(_cfg(tmp_path, channels_last=False), run_dir=tmp_path / "c").channels_last


class _Killed(Exception):
    pass


def test_the_defaults_resume_bit_exactly(tmp_path: Path) -> None:
    over = {"precision": "auto", "channels_last": "auto", "checkpoint_every": 3}
    full = train(_cfg(tmp_path, **over), run_dir=tmp_path / "full")

    def kill(stage: str, it: int, total: int) -> None:
        if it == 5:
            raise _Killed

    with pytest.raises(_Killed):
        train(_cfg(tmp_path, **over), run_dir=tmp_path / "cut", handlers=[ReportProgress(kill)])
    resumed = train(_cfg(tmp_path, **over), run_dir=tmp_path / "cut", resume=True)
    a, b = RunDir(full.run_dir), RunDir(resumed.run_dir)
    for which in ("last", "model"):
        wa, wb = a.load_weights(which), b.load_weights(which)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r.pop("time") and r for r in a.read_metrics()] == [
        r.pop("time") and r for r in b.read_metrics()
    ]
    env = b.read_env()
    assert env["channels_last"] is True
    assert env["precision"] == ("bf16" if step_mod.native_bf16(torch.device("cpu")) else "fp32")
