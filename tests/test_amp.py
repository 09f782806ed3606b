"""Mixed precision: bf16 autocast on CPU trains, stays finite and tracks fp32."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kdlab.config import load_config
from kdlab.engine import Trainer
from kdlab.errors import ConfigError


def _cfg(tmp: Path, amp: str):
    return load_config(
        {
            "name": f"amp-{amp}",
            "seed": 1,
            "output_dir": str(tmp),
            "data": {"name": "digits", "batch_size": 32, "per_class": 10},
            "student": {"name": "cnn_small"},
            "teacher": {"name": "cnn_tiny"},
            "distill": {"terms": [{"method": "ce"}, {"method": "kd"}]},
            "train": {
                "epochs": 2,
                "amp": amp,
                "optimizer": {"lr": 0.05},
                "schedule": {"name": "constant"},
                "progress": False,
                "device": "cpu",
            },
        }
    )


def _train(tmp: Path, amp: str) -> tuple[list[dict], set[torch.dtype]]:
    trainer = Trainer(_cfg(tmp, amp), run_dir=tmp / amp)
    seen: set[torch.dtype] = set()
    trainer.distiller.student.fc.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    result = trainer.run()
    return result.history, seen


def test_bf16_on_cpu_trains_close_to_fp32(tmp_path: Path) -> None:
    fp32, dtypes32 = _train(tmp_path, "off")
    bf16, dtypes16 = _train(tmp_path, "bf16")
    assert torch.bfloat16 in dtypes16  # autocast really ran the student in bf16
    assert dtypes32 == {torch.float32}
    for a, b in zip(fp32, bf16):
        assert math.isfinite(b["train_loss"])
        # bf16 keeps 8 mantissa bits: per-step losses drift by well under 5 %.
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)
    assert bf16[-1]["train_loss"] < bf16[0]["train_loss"]  # and it learns


def test_fp16_needs_cuda(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("fp16 is valid here (CUDA present)")
    with pytest.raises(ConfigError, match="fp16.*bf16"):
        Trainer(_cfg(tmp_path, "fp16"), run_dir=tmp_path / "x")
