"""Every registered method trains two steps on digits from its shipped recipe.

Parametrised over the registry: a method without ``configs/digits/<method>.yaml`` fails
here, so adding a method means adding its recipe too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kdlab import recipes
from kdlab.config import load_config, read_yaml
from kdlab.demo import CROSS_STUDENT, CROSS_TAP_MAP, remap_student_taps
from kdlab.engine import train
from kdlab.methods import METHODS

RECIPES = recipes.folder("digits")
TEST_ONLY = {m for m in METHODS.names() if m.startswith("_")}
# Attention maps (N, heads, L, L) exist only in transformers: tests/test_transformers.py.
TEST_ONLY.add("attention_kl")


@pytest.mark.parametrize("pair", ["same-family", "cross-architecture"])
@pytest.mark.parametrize("method", [m for m in METHODS.names() if m not in TEST_ONLY])
def test_method_trains_two_steps_from_its_recipe(
    method: str, pair: str, tmp_path: Path, digits_teacher: Path
) -> None:
    path = RECIPES / ("vanilla.yaml" if method == "ce" else f"{method}.yaml")
    assert path.is_file(), f"method {method!r} has no recipe {path}"
    data = read_yaml(path)
    assert any(t.get("method") == method for t in data["distill"]["terms"])
    overrides = [
        "train.epochs=1",
        "train.pre_stage_epochs=1",
        "train.progress=false",
        "data.per_class=13",  # 130 samples: 2 steps of 64 per stage
        "data.batch_size=64",
        f"output_dir={tmp_path}",
    ]
    if "teacher" in data:
        overrides.append(f"teacher.checkpoint={digits_teacher}")
    if pair == "cross-architecture":  # cnn_medium -> resnet8, the recipe's taps remapped
        data["student"] = {"name": CROSS_STUDENT}
        data["distill"] = remap_student_taps(data["distill"], CROSS_TAP_MAP)
    cfg = load_config(data, overrides)
    result = train(cfg)
    rows = [
        json.loads(r) for r in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows and rows[-1]["stage"] == "main"
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    assert 0.0 <= result.test_acc_best <= 100.0
