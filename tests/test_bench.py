"""kdlab bench: protocol expansion, teacher caching, resume, report files and values."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

import kdlab.bench.run as bench_run
from kdlab.bench import (
    RunRecord,
    builtin_protocols,
    config_hash,
    expand,
    load_protocol,
    run_matrix,
    run_rows,
    summary_tables,
    write_report,
)
from kdlab.bench.protocol import RunSpec
from kdlab.cli import main
from kdlab.config import load_config
from kdlab.errors import ConfigError
from kdlab.methods import METHODS, build_terms


def _write_protocol(path: Path, **changes: object) -> Path:
    data = {
        "name": "tiny",
        "base": {"data": {"name": "digits"}, "train": {"device": "cpu"}},
        "epochs": 1,
        "seeds": [0, 1],
        "pairs": [{"teacher": {"name": "cnn_medium"}, "student": {"name": "cnn_small"}}],
        "methods": {"kd": {"terms": [{"method": "ce", "weight": 0.1}, {"method": "kd"}]}},
    }
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------ protocols


def test_shipped_protocols_are_listed() -> None:
    assert {"digits", "digits-ci", "cifar100"} <= set(builtin_protocols())


@pytest.mark.parametrize("name", ["digits", "digits-ci", "cifar100"])
def test_shipped_protocols_expand_to_valid_configs(name: str, tmp_path: Path) -> None:
    proto = load_protocol(name)
    runs = expand(proto, tmp_path)
    n_pairs, n_seeds = len(proto.spec.pairs), len(proto.spec.seeds)
    assert len(runs) == n_pairs * n_seeds * (2 + len(proto.methods))
    for run in runs:
        terms = [t["method"] for t in run.cfg.distill.terms]
        if all(m in METHODS for m in terms):  # methods still on other branches are skipped
            build_terms(run.cfg.distill.terms)  # term params validate (tap names, keys)


def test_expand_caches_teacher_by_config_hash(tmp_path: Path) -> None:
    proto = load_protocol(_write_protocol(tmp_path / "p.yaml"))
    runs = expand(proto, tmp_path / "out")
    teachers = [r for r in runs if r.kind == "teacher"]
    kd = [r for r in runs if r.method == "kd"]
    assert [t.seed for t in teachers] == [0, 1]
    for t, k in zip(teachers, kd):
        # the distillation run of a seed reads the teacher trained with that seed
        assert k.cfg.teacher is not None and k.cfg.teacher.checkpoint == str(t.run_dir)
        assert t.run_dir.name == f"cnn_medium-seed{t.seed}-{config_hash(t.cfg)}"
    # a change that matters gives a different teacher; names and folders do not matter
    other = load_protocol(_write_protocol(tmp_path / "q.yaml", teacher_epochs=3))
    t2 = [r for r in expand(other, tmp_path / "out") if r.kind == "teacher"]
    assert t2[0].run_dir != teachers[0].run_dir
    renamed = teachers[0].cfg.model_copy(update={"name": "x", "output_dir": "elsewhere"})
    assert config_hash(renamed) == config_hash(teachers[0].cfg)


def test_per_pair_taps_override_terms(tmp_path: Path) -> None:
    path = _write_protocol(
        tmp_path / "p.yaml",
        methods={"logits": {"terms": [{"method": "logits", "name": "mimic"}]}},
        pairs=[
            {
                "teacher": {"name": "cnn_medium"},
                "student": {"name": "cnn_small"},
                "taps": {"logits": {"weight": 2.5}},
            }
        ],
    )
    runs = expand(load_protocol(path), tmp_path)
    term = [r for r in runs if r.method == "logits"][0].cfg.distill.terms[0]
    assert term.model_dump(exclude_defaults=True) == {
        "method": "logits",
        "name": "mimic",
        "weight": 2.5,
    }


def test_protocol_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'digits'"):
        load_protocol("digitz")
    with pytest.raises(ConfigError, match="no method 'kdd'.*'kd'"):
        load_protocol("digits-ci", methods=["kdd"])
    with pytest.raises(ConfigError, match="reserved"):
        load_protocol(_write_protocol(tmp_path / "p.yaml", methods={"vanilla": {"terms": []}}))
    with pytest.raises(ConfigError, match="unknown key 'protocol q.yaml.epoch'.*'epochs'"):
        load_protocol(_write_protocol(tmp_path / "q.yaml", epoch=3))


def test_method_from_recipe_file_uses_its_distill_section(tmp_path: Path) -> None:
    recipe = tmp_path / "my_kd.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "student": {"name": "cnn_small"},
                "teacher": {"name": "cnn_medium"},
                "train": {"epochs": 99},
                "distill": {"terms": [{"method": "kd", "T": 2.0}]},
            }
        )
    )
    proto = load_protocol(_write_protocol(tmp_path / "p.yaml", methods={"mine": "my_kd.yaml"}))
    run = [r for r in expand(proto, tmp_path) if r.method == "mine"][0]
    assert [t.model_dump(exclude_defaults=True) for t in run.cfg.distill.terms] == [
        {"method": "kd", "T": 2.0}
    ]
    assert run.cfg.train.epochs == 1  # the protocol's schedule, not the recipe's


# ------------------------------------------------------------------ report values


def _record(
    pair: str, method: str, kind: str, seed: int, best: float, last: float, wall: float = 0.0
) -> RunRecord:
    cfg = load_config({"name": "r", "student": {"name": "cnn_small"}})
    spec = RunSpec(kind, pair, method, seed, cfg, Path(f"/x/{method}/{seed}"))
    res = {
        "test_acc_best": best,
        "test_acc_last": last,
        "selection": "best-val",
        "wall_time_s": wall,
    }
    return RunRecord(spec=spec, results=res)


def test_gain_is_per_seed_and_table_shows_mean_std(tmp_path: Path) -> None:
    proto = load_protocol(_write_protocol(tmp_path / "p.yaml"))
    pair = proto.spec.pairs[0].label
    recs = [
        _record(pair, "teacher", "teacher", 0, 98.0, 97.0),
        _record(pair, "vanilla", "vanilla", 0, 90.0, 89.0),
        _record(pair, "kd", "method", 0, 93.0, 91.0, wall=10.0),
        _record(pair, "teacher", "teacher", 1, 98.0, 97.0),
        _record(pair, "vanilla", "vanilla", 1, 80.0, 79.0),
        _record(pair, "kd", "method", 1, 82.0, 82.0, wall=14.0),
    ]
    rows = run_rows(recs)
    kd = [r for r in rows if r["method"] == "kd"]
    assert [r["gain_best"] for r in kd] == [3.0, 2.0]
    assert [r["gain_last"] for r in kd] == [2.0, 3.0]
    assert kd[0]["teacher_acc_best"] == 98.0
    table = summary_tables(proto, rows)
    kd_line = [line for line in table.splitlines() if line.startswith("| kd ")][0]
    cells = [c.strip() for c in kd_line.strip("|").split("|")]
    sd = math.sqrt(0.5)  # sample std of (3, 2) and of (2, 3)
    # Student-t with 1 degree of freedom is Cauchy: its 0.975 quantile is tan(0.475 pi).
    half = math.tan(0.475 * math.pi) * sd / math.sqrt(2)
    assert cells == [
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


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def ci_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "digits-ci"
    code = main(["bench", "digits-ci", "--out", str(out), "--no-progress"])
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
        res = json.loads((run / "results.json").read_text())
        assert float(r["test_acc_best"]) == pytest.approx(res["test_acc_best"])
    van = {r["seed"]: float(r["test_acc_best"]) for r in rows if r["method"] == "vanilla"}
    for r in rows:
        if r["method"] in ("kd", "logits"):
            assert float(r["gain_best"]) == pytest.approx(
                float(r["test_acc_best"]) - van[r["seed"]]
            )
    table = (report / "table.md").read_text()
    assert "best-val" in table and "| kd " in table and "| logits " in table


def test_killed_bench_resumes_without_rerunning_finished(
    ci_bench: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = ci_bench
    proto = load_protocol("digits-ci")
    runs = {r.label: r for r in expand(proto, out)}
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
    records = run_matrix(proto, out, progress=False)
    assert calls == [(str(killed), True), (str(gone), False)]
    assert len(records) == len(runs)
    assert all((r.spec.run_dir / "results.json").is_file() for r in records)
    again = json.loads((runs["cnn_medium-cnn_small/kd/seed0"].run_dir / "results.json").read_text())
    assert again == before
    calls.clear()
    run_matrix(proto, out, progress=False)
    assert calls == []  # everything finished: nothing is trained again


def test_a_failing_run_is_recorded_and_the_rest_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proto = load_protocol(_write_protocol(tmp_path / "p.yaml", seeds=[0]))
    out = tmp_path / "out"

    def fake_train(cfg, run_dir=None, resume=False, **kw):  # noqa: ANN001, ANN202
        if "kd" in cfg.name:
            raise ValueError("broken method")
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        res = {"test_acc_best": 90.0, "test_acc_last": 89.0, "selection": "best-val"}
        (Path(run_dir) / "results.json").write_text(json.dumps(res))

    monkeypatch.setattr(bench_run, "train", fake_train)
    failures: list = []
    records = run_matrix(proto, out, progress=False, failures=failures)
    assert [r.spec.method for r in records] == ["teacher", "vanilla"]
    assert [(s.method, msg) for s, msg in failures] == [("kd", "ValueError: broken method")]
    assert "broken method" in (failures[0][0].run_dir / "error.txt").read_text()
    table = write_report(proto, records, out / "report", plots=False, failures=failures)
    assert "tiny-kd-seed0" not in table["table"].read_text()
    assert (
        "`cnn_medium-cnn_small/kd/seed0`: ValueError: broken method" in table["table"].read_text()
    )
    with pytest.raises(ValueError, match="broken method"):
        run_matrix(proto, out, progress=False, keep_going=False)


def test_a_changed_protocol_does_not_reuse_stale_runs(ci_bench: Path) -> None:
    proto = load_protocol("digits-ci")
    proto.spec.epochs = 2
    with pytest.raises(ConfigError, match=r"another config \(train\.epochs: 1 -> 2\)"):
        run_matrix(proto, ci_bench, progress=False)


def test_recipes_folder_with_exclusions(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    folder.mkdir()
    for name in ("a", "b", "_scratch"):
        (folder / f"{name}.yaml").write_text(
            yaml.safe_dump(
                {
                    "student": {"name": "cnn_small"},
                    "teacher": {"name": "cnn_medium"},
                    "distill": {"terms": [{"method": "kd"}]},
                }
            )
        )
    (folder / "teacher.yaml").write_text(yaml.safe_dump({"student": {"name": "cnn_medium"}}))
    proto = load_protocol(_write_protocol(tmp_path / "p.yaml", recipes="recipes", exclude=["b"]))
    assert list(proto.methods) == ["a", "kd"]  # no teacher recipe, no '_' file, no 'b'
