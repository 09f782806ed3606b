"""The studies as shipped protocols, each end to end at a tiny size through the CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from kdlab.cli import main

QUICK = "train.epochs=1 train.threads=1 train.device=cpu"


def _run(tmp_path: Path, argv: str) -> tuple[str, list[dict[str, str]]]:
    out = tmp_path / "out"
    code = main([*argv.split(), "--out", str(out), "--no-progress", "--no-plots"])
    assert code == 0
    with open(out / "report" / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    return (out / "report" / "table.md").read_text(), rows


def _arms(rows: list[dict[str, str]]) -> list[tuple[str, str, str]]:
    return sorted((r["condition"], r["method"], r["seed"]) for r in rows)


def _gains_are_paired(rows: list[dict[str, str]], baseline: str) -> None:
    base = {
        (r["condition"], r["seed"]): float(r["test_best"]) for r in rows if r["method"] == baseline
    }
    for r in rows:
        if r["kind"] == "method":
            want = float(r["test_best"]) - base[(r["condition"], r["seed"])]
            assert float(r["gain_best"]) == pytest.approx(want)


def test_demo_is_the_demo_protocol(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table, rows = _run(tmp_path, f"demo {QUICK} --seeds 0,1 --methods kd")
    assert "### cnn_medium-cnn_small" in capsys.readouterr().out and "| kd " in table
    assert _arms(rows) == [
        ("", "kd", "0"),
        ("", "kd", "1"),
        ("", "teacher", "0"),
        ("", "vanilla", "0"),
        ("", "vanilla", "1"),
    ]
    _gains_are_paired(rows, "vanilla")
    # the cross-architecture pair: the recipes' taps renamed, the same (cached) teacher
    table, rows = _run(tmp_path, f"demo {QUICK} --seeds 0 --cross --methods at")
    assert "### cnn_medium-resnet8" in table
    assert len({r["run_dir"] for r in rows if r["kind"] == "teacher"}) == 1


def test_fewshot(tmp_path: Path) -> None:
    argv = f"bench fewshot {QUICK} --seeds 0 --conditions n1 n5 --methods kd+jacobian"
    table, rows = _run(tmp_path, argv)
    assert "### cnn_medium-cnn_small, 1 per class" in table and "| kd+jacobian " in table
    assert _arms(rows) == [
        ("", "teacher", "0"),
        ("n1", "kd+jacobian", "0"),
        ("n1", "vanilla", "0"),
        ("n5", "kd+jacobian", "0"),
        ("n5", "vanilla", "0"),
    ]
    _gains_are_paired(rows, "vanilla")


def test_cqd(tmp_path: Path) -> None:
    argv = f"bench cqd {QUICK} data.per_class=20 --seeds 0 --conditions lowres4"
    table, rows = _run(tmp_path, argv)
    assert "### cnn_medium-cnn_small, low-res 4x4" in table
    assert "| labels only " in table and "| cqd " in table
    tested = [r for r in rows if r["kind"] == "teacher" and r["condition"] == "lowres4"]
    own = [r for r in rows if r["kind"] == "teacher" and r["condition"] == ""]
    assert len(tested) == 1 and len(own) == 1  # the clean teacher on the degraded test split
    assert tested[0]["test_best"] != own[0]["test_best"]
    assert tested[0]["run_dir"] == own[0]["run_dir"]
    _gains_are_paired(rows, "labels only")


def test_omni(tmp_path: Path) -> None:
    table, rows = _run(tmp_path, f"bench omni {QUICK} --seeds 0")
    assert "| supervised only " in table and "| data_distillation " in table
    teacher = next(r for r in rows if r["kind"] == "teacher")
    supervised = next(r for r in rows if r["kind"] == "baseline")
    dd = next(r for r in rows if r["kind"] == "method")
    assert supervised["run_dir"] == teacher["run_dir"]  # trained once
    assert int(dd["info_n_pseudo"]) == int(dd["info_n_unlabelled"]) > 1000  # threshold 0
    assert int(dd["info_n_labelled"]) < 140
    _gains_are_paired(rows, "supervised only")


def test_metric_learning_selects_and_scores_on_retrieval(tmp_path: Path) -> None:
    table, rows = _run(tmp_path, f"bench metric {QUICK} --seeds 0")
    assert "test recall@1, best-val epoch" in table and "test recall@5, best-val epoch" in table
    assert _arms(rows) == [
        ("", "darkrank_hard", "0"),
        ("", "darkrank_soft", "0"),
        ("", "teacher", "0"),
        ("", "triplet", "0"),
    ]
    assert {r["metric"] for r in rows} == {"recall@1"}
    for r in rows:  # Recall@K grows with K
        assert 0.0 <= float(r["test_best"]) <= float(r["test_recall@5_best"]) <= 100.0
    _gains_are_paired(rows, "triplet")
