"""``kdlab train`` / ``kdlab eval`` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdlab.cli import main
from kdlab.rundir import RunDir


def test_train_refuses_a_second_fresh_run_then_eval_scores_with_the_run_evaluator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "r"
    overrides = ["train.epochs=1", "data.per_class=10", "train.progress=false", "train.threads=1"]
    args = ["train", "digits/vanilla", *overrides, "--run-dir", str(run)]
    assert main(args) == 0
    assert main(args) == 2  # the folder holds a run
    assert "holds a finished run" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--weights", "last", "--split", "test"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {k: out[k] for k in ("acc1", "acc5")} == {
        k: RunDir(run).read_results()["test_last"][k] for k in ("acc1", "acc5")
    }
