"""The few-shot protocol: subsets, recipes, a tiny end-to-end run and its table."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdlab.cli import main
from kdlab.config import DataConfig
from kdlab.data import build_dataset
from kdlab.errors import ConfigError
from kdlab.protocols.fewshot import (
    FewShotSettings,
    fewshot_bundle,
    method_recipe,
    run_fewshot,
    student_config,
)


def test_bundle_has_n_per_class_repeated_and_fixed_eval_splits() -> None:
    full = build_dataset(DataConfig(name="digits"))
    a = fewshot_bundle(full, 2, seed=0, epoch_samples=50)
    b = fewshot_bundle(full, 2, seed=1, epoch_samples=50)
    assert len(a.train) == 60  # 20 samples repeated 3 times to reach 50
    assert torch.bincount(a.train.y, minlength=10).tolist() == [6] * 10
    unique = torch.unique(a.train.x.flatten(1), dim=0)
    assert unique.shape[0] == 20
    assert not torch.equal(a.train.x[:20], b.train.x[:20])  # the seed draws the samples
    assert a.val is full.val and a.test is full.test


def test_method_recipes() -> None:
    s = FewShotSettings(jacobian_weight=2.5, noise_sigma=0.2)
    assert [t["method"] for t in method_recipe("vanilla", s)["terms"]] == ["ce"]
    jac = method_recipe("kd+jacobian", s)["terms"]
    assert [t["method"] for t in jac] == ["ce", "kd", "jacobian"] and jac[2]["weight"] == 2.5
    noisy = method_recipe("noisy_kd", s)
    assert noisy["views"]["noisy"] == {"type": "gaussian_noise", "sigma": 0.2}
    kd = noisy["terms"][1]
    assert kd["student_view"] == kd["teacher_view"] == "noisy"
    assert student_config("vanilla", 1, 0, s, "t").teacher is None
    assert student_config("kd", 1, 0, s, "t").teacher.checkpoint == "t"
    with pytest.raises(ConfigError, match="unknown few-shot method"):
        method_recipe("fitnet", s)


def test_tiny_protocol_end_to_end_and_reuse(tmp_path: Path) -> None:
    s = FewShotSettings(
        shots=(1,),
        seeds=(0,),
        epochs=1,
        teacher_epochs=1,
        epoch_samples=64,
        out=str(tmp_path / "fs"),
        device="cpu",
    )
    logs: list[str] = []
    res = run_fewshot(s, log=logs.append)
    assert [r["method"] for r in res.runs] == ["vanilla", "kd", "kd+jacobian", "noisy_kd"]
    assert all(0.0 <= r["test_acc_best"] <= 100.0 for r in res.runs)
    for name in ("vanilla", "kd", "kd+jacobian", "noisy_kd"):
        assert name in res.table
    csv_lines = Path(res.paths["csv"]).read_text().splitlines()
    assert len(csv_lines) == 1 + 4
    # a second call reuses every finished run (same numbers, no retraining)
    again = run_fewshot(s, log=logs.append)
    assert [r["wall_time_s"] for r in again.runs] == [r["wall_time_s"] for r in res.runs]


def test_cli_rejects_bad_lists(capsys: pytest.CaptureFixture) -> None:
    assert main(["protocol", "fewshot", "--methods", "kd,nope"]) == 2
    assert "methods must be among" in capsys.readouterr().err
    assert main(["protocol", "fewshot", "--shots", "a"]) == 2
