"""The report: per-seed paired gains, their interval, one table per pair and condition."""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from kdlab.bench import RunRecord, load_protocol, run_rows, summary_tables, write_report
from kdlab.bench.matrix import RunSpec
from kdlab.bench.protocol import BASELINE, METHOD, TEACHER
from kdlab.config import load_config


def _protocol(tmp_path: Path, **changes: object):  # noqa: ANN202
    data = {
        "name": "tiny",
        "pairs": [{"teacher": {"name": "cnn_medium"}, "student": {"name": "cnn_small"}}],
        "methods": {"kd": "digits/kd"},
        **changes,
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_protocol(path)


def _record(
    pair: str, method: str, kind: str, seed: int, best: float, last: float, **kw: object
) -> RunRecord:
    cfg = load_config({"name": "r", "student": {"name": "cnn_small"}})
    spec = RunSpec(kind, pair, method, seed, cfg, Path(f"/x/{method}/{seed}"), **kw)
    res = {"test_acc_best": best, "test_acc_last": last, "selection": "best-val"}
    res["wall_time_s"] = 10.0 + 4 * seed
    return RunRecord(spec=spec, results=res)


def _cells(table: str, name: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {name} "))
    return [c.strip() for c in line.strip("|").split("|")]


def test_gain_is_per_seed_and_table_shows_mean_std(tmp_path: Path) -> None:
    proto = _protocol(tmp_path)
    pair = proto.spec.pairs[0].label
    recs = [
        _record(pair, "teacher", TEACHER, 0, 98.0, 97.0),
        _record(pair, "vanilla", BASELINE, 0, 90.0, 89.0),
        _record(pair, "kd", METHOD, 0, 93.0, 91.0),
        _record(pair, "teacher", TEACHER, 1, 98.0, 97.0),
        _record(pair, "vanilla", BASELINE, 1, 80.0, 79.0),
        _record(pair, "kd", METHOD, 1, 82.0, 82.0),
    ]
    rows = run_rows(recs, proto)
    kd = [r for r in rows if r["method"] == "kd"]
    assert [r["gain_best"] for r in kd] == [3.0, 2.0]
    assert [r["gain_last"] for r in kd] == [2.0, 3.0]
    table = summary_tables(proto, rows)
    sd = math.sqrt(0.5)  # sample std of (3, 2) and of (2, 3)
    # Student-t with 1 degree of freedom is Cauchy: its 0.975 quantile is tan(0.475 pi).
    half = math.tan(0.475 * math.pi) * sd / math.sqrt(2)
    assert _cells(table, "kd") == [
        "kd",
        "2",
        f"87.50 +- {math.sqrt(60.5):.2f}",
        f"86.50 +- {math.sqrt(40.5):.2f}",
        f"+2.50 +- {sd:.2f}",
        f"[{2.5 - half:+.2f}, {2.5 + half:+.2f}]",
        f"+2.50 +- {sd:.2f}",
        "12",
    ]
    paths = write_report(proto, recs, tmp_path / "rep", plots=False)
    assert "| kd " in paths["table"].read_text()


def test_one_table_per_condition_with_its_baseline(tmp_path: Path) -> None:
    proto = _protocol(
        tmp_path,
        baseline={"name": "labels only", "recipe": "digits/cqd", "without": ["cqd"]},
        conditions={"a": {"label": "blur"}, "b": {"label": "noise"}},
    )
    pair = proto.spec.pairs[0].label
    teacher = _record(pair, "teacher", TEACHER, 0, 97.0, 97.0)
    recs = [teacher]
    for cond, shift in (("a", 0.0), ("b", 10.0)):
        for seed in (0, 1):
            kw = {"condition": cond, "teacher": teacher.spec}
            recs.append(_record(pair, "labels only", BASELINE, seed, 80 - shift, 80 - shift, **kw))
            recs.append(_record(pair, "kd", METHOD, seed, 81 - shift + seed, 80, **kw))
    # the teacher tested on condition b's (changed) test split
    tested = RunRecord(
        RunSpec(TEACHER, pair, "teacher", 0, teacher.spec.cfg, teacher.spec.run_dir, "b"),
        {**teacher.results, "test_acc_best": 40.0, "test_acc_last": 40.0},
        info={"tested_on": "students' test split"},
    )
    recs.append(tested)
    rows = run_rows(recs, proto)
    students = [r for r in rows if r["kind"] != TEACHER]
    assert {r["teacher_best"] for r in students if r["condition"] == "b"} == {40.0}
    assert {r["teacher_best"] for r in students if r["condition"] == "a"} == {97.0}
    table = write_report(proto, recs, tmp_path / "rep", plots=False)["table"].read_text()
    blocks = table.split("### ")[1:]
    assert [b.splitlines()[0] for b in blocks] == [f"{pair}, blur", f"{pair}, noise"]
    assert _cells(blocks[0], "teacher")[2] == "97.00 +- 0.00"
    assert _cells(blocks[1], "teacher")[2] == "40.00 +- 0.00"
    assert _cells(blocks[1], "labels only")[2] == "70.00 +- 0.00"
    assert _cells(blocks[1], "kd")[4] == f"+1.50 +- {math.sqrt(0.5):.2f}"
    assert "teacher row is the teacher (trained on its own data) tested" in table


def test_plots_are_written(tmp_path: Path) -> None:
    proto = _protocol(tmp_path)
    pair = proto.spec.pairs[0].label
    recs = [_record(pair, "vanilla", BASELINE, 0, 90, 90), _record(pair, "kd", METHOD, 0, 91, 90)]
    paths = write_report(proto, recs, tmp_path / "rep", plots=True)
    assert paths["gain_plot"].stat().st_size > 0 and paths["curves_plot"].stat().st_size > 0


def test_scores_follow_the_selection_metric(tmp_path: Path) -> None:
    """Results that name their selection metric (an evaluator's, e.g. retrieval) are
    tabled by it; results written before evaluators by top-1 accuracy."""
    from kdlab.bench.report import scores  # noqa: PLC0415

    new = {"select": "recall@1", "test_score_best": 70.0, "test_score_last": 68.0}
    assert scores({**new, "val_score": 75.0}) == ("recall@1", 70.0, 68.0, 75.0)
    assert scores({"test_acc_best": 90.0, "test_acc_last": 89.0}) == ("acc1", 90.0, 89.0, None)
    proto = _protocol(tmp_path, extra_metrics=["recall@5"])
    pair = proto.spec.pairs[0].label
    recs = [_record(pair, "vanilla", BASELINE, 0, 0, 0), _record(pair, "kd", METHOD, 0, 0, 0)]
    recs[0].results = {**new, "test_score_best": 60.0, "test_best": {"recall@5": 90.0}}
    recs[1].results = {**new, "test_best": {"recall@1": 70.0, "recall@5": 93.5}}
    rows = run_rows(recs, proto)
    assert [r["gain_best"] for r in rows] == ["", 10.0]
    assert [r["test_recall@5_best"] for r in rows] == [90.0, 93.5]
    table = summary_tables(proto, rows)
    assert "| test recall@1, best-val epoch | test recall@1, last epoch | test recall@5" in table
    assert _cells(table, "kd")[:5] == ["kd", "1", "70.00 +- 0.00", "68.00 +- 0.00", "93.50 +- 0.00"]
