"""The matrix runner: end to end on digits-ci, resume, failures, the cache of runs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

import kdlab.bench.run as bench_run
from kdlab.bench import expand, load_protocol, run_matrix, write_report
from kdlab.cli import main


def _tiny(path: Path, **changes: object) -> Path:
    data = {
        "name": "tiny",
        "base": {"data": {"name": "digits"}, "train": {"device": "cpu", "threads": 1}},
        "epochs": 1,
        "seeds": [0],
        "pairs": [{"teacher": {"name": "cnn_medium"}, "student": {"name": "cnn_small"}}],
        "methods": {"kd": "digits/kd"},
        **changes,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def _fake_train(fail: str = "") -> list[str]:
    """A train() stand-in that writes results.json; runs whose name has ``fail`` raise."""
    calls: list[str] = []
    resumed: list[tuple[str, bool]] = []

    def fake(cfg, run_dir=None, resume=False, **kw):  # noqa: ANN001, ANN202
        calls.append(cfg.name)
        resumed.append((cfg.name, resume))
        if fail and fail in cfg.name:
            raise ValueError("broken method")
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        res = {"test_acc_best": 90.0, "test_acc_last": 89.0, "selection": "best-val"}
        (Path(run_dir) / "results.json").write_text(json.dumps(res))

    fake.calls = calls  # type: ignore[attr-defined]
    fake.resumed = resumed  # type: ignore[attr-defined]
    return fake  # type: ignore[return-value]


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def ci_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "digits-ci"
    code = main(["bench", "digits-ci", "train.threads=1", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_digits_ci_writes_report(ci_bench: Path) -> None:
    report = ci_bench / "report"
    for name in ("runs.csv", "table.md", "gain.png", "curves.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0
    rows = _csv_rows(report / "runs.csv")
    got = sorted((r["method"], r["seed"]) for r in rows)
    want = sorted((m, s) for m in ("teacher", "vanilla", "kd", "logits") for s in ("0", "1"))
    assert got == want
    for r in rows:
        run = Path(r["run_dir"])
        for f in ("config.yaml", "env.json", "metrics.jsonl", "results.json"):
            assert (run / f).is_file(), (run, f)
        info = json.loads(run.with_name(run.name + ".bench.json").read_text())
        assert info["cell"].endswith(f"/seed{r['seed']}") and info["key"] in run.name
        res = json.loads((run / "results.json").read_text())
        assert float(r["test_best"]) == pytest.approx(res["test_acc_best"])
        assert float(r["wall_time_s"]) == pytest.approx(res["wall_time_s"], abs=0.01)
    van = {r["seed"]: float(r["test_best"]) for r in rows if r["method"] == "vanilla"}
    for r in rows:
        if r["method"] in ("kd", "logits"):
            assert float(r["gain_best"]) == pytest.approx(float(r["test_best"]) - van[r["seed"]])
    table = (report / "table.md").read_text()
    assert "best-val" in table and "| kd " in table and "gain 95% CI" in table


def test_killed_bench_resumes_without_rerunning_finished(
    ci_bench: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = ci_bench
    proto = load_protocol("digits-ci")
    overrides = ["train.threads=1"]
    runs = {r.label: r for r in expand(proto, out, overrides)}
    killed = runs["cnn_medium-cnn_small/kd/seed1"].run_dir
    (killed / "results.json").unlink()  # killed after its last checkpoint, before results
    gone = runs["cnn_medium-cnn_small/logits/seed1"].run_dir
    shutil.rmtree(gone)  # never started
    before = json.loads(
        (runs["cnn_medium-cnn_small/kd/seed0"].run_dir / "results.json").read_text()
    )
    calls: list[tuple[str, bool]] = []
    real_train = bench_run.train

    def counting_train(cfg, run_dir=None, resume=False, **kw):  # noqa: ANN001, ANN202
        calls.append((str(run_dir), resume))
        return real_train(cfg, run_dir=run_dir, resume=resume, **kw)

    monkeypatch.setattr(bench_run, "train", counting_train)
    records = run_matrix(proto, out, overrides, progress=False)
    assert calls == [(str(killed), True), (str(gone), False)]
    assert len(records) == len(runs)
    again = json.loads((runs["cnn_medium-cnn_small/kd/seed0"].run_dir / "results.json").read_text())
    assert again == before
    calls.clear()
    run_matrix(proto, out, overrides, progress=False)
    assert calls == []  # everything finished: nothing is trained again


def test_a_changed_protocol_trains_new_runs_and_keeps_the_rest(
    ci_bench: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proto = load_protocol("digits-ci")
    proto.spec.epochs = 2  # students change; the teachers (teacher_epochs 2) do not
    fake = _fake_train()
    monkeypatch.setattr(bench_run, "train", fake)
    run_matrix(proto, ci_bench, ["train.threads=1"], progress=False)
    assert sorted(fake.calls) == sorted(  # type: ignore[attr-defined]
        f"cnn_medium-cnn_small-{m}-seed{s}" for m in ("vanilla", "kd", "logits") for s in (0, 1)
    )


# ------------------------------------------------------------------ failures


def test_a_failing_run_is_recorded_and_the_rest_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proto = load_protocol(_tiny(tmp_path / "p.yaml"))
    out = tmp_path / "out"
    fake = _fake_train(fail="kd")
    monkeypatch.setattr(bench_run, "train", fake)
    failures: list = []
    records = run_matrix(proto, out, progress=False, failures=failures)
    assert [r.spec.method for r in records] == ["teacher", "vanilla"]
    assert [(s.method, msg) for s, msg in failures] == [("kd", "ValueError: broken method")]
    assert "broken method" in (failures[0][0].run_dir / "error.txt").read_text()
    table = write_report(proto, records, out / "report", plots=False, failures=failures)
    text = table["table"].read_text()
    assert "`cnn_medium-cnn_small/kd/seed0`: ValueError: broken method" in text
    fake.resumed.clear()  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="broken method"):
        run_matrix(proto, out, progress=False, keep_going=False)
    # Its folder holds only error.txt, no run: retried as a fresh start (--resume would
    # refuse a folder that holds no run).
    assert [r for name, r in fake.resumed if "kd" in name] == [False]  # type: ignore[attr-defined]


def test_runs_whose_teacher_failed_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proto = load_protocol(_tiny(tmp_path / "p.yaml", seeds=[0, 1]))
    fake = _fake_train(fail="teacher-seed1")
    monkeypatch.setattr(bench_run, "train", fake)
    failures: list = []
    run_matrix(proto, tmp_path / "out", progress=False, failures=failures)
    assert "cnn_medium-cnn_small-kd-seed1" not in fake.calls  # type: ignore[attr-defined]
    assert [(s.label, m.split(":")[0]) for s, m in failures] == [
        ("cnn_medium-cnn_small/teacher/seed1", "ValueError"),
        ("cnn_medium-cnn_small/kd/seed1", "not run"),
    ]
