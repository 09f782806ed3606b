"""Every cell is validated before the first run trains (issue 11, item 11)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import kdlab.bench.run as bench_run
from kdlab.bench import load_protocol, run_matrix
from kdlab.cli import main
from kdlab.errors import ConfigError


def _protocol(tmp_path: Path, distill: dict[str, Any], **changes: object) -> Path:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "student": {"name": "cnn_small"},
                "teacher": {"name": "cnn_medium"},
                "distill": distill,
            }
        )
    )
    data = {
        "name": "checked",
        "base": {"data": {"name": "digits"}, "train": {"device": "cpu"}},
        "seeds": [0, 1, 2],
        "pairs": [{"teacher": {"name": "cnn_medium"}, "student": {"name": "cnn_small"}}],
        "methods": {"kd": "digits/kd", "bad": "bad.yaml"},
        **changes,
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kw: Any) -> None:
        raise AssertionError("a run trained before the matrix was validated")

    monkeypatch.setattr(bench_run, "train", refuse)


KD = {"method": "kd", "T": 4.0}


@pytest.mark.parametrize(
    ("distill", "message"),
    [
        ({"terms": [{"method": "kdd"}]}, "unknown method 'kdd'; did you mean 'kd'"),
        ({"terms": [{"method": "kd", "TT": 2}]}, r"'distill.terms.0 \(kd\).TT'; did you mean 'T'"),
        (
            {"views": {"n": {"type": "gausian_noise"}}, "terms": [KD]},
            "unknown view 'gausian_noise'; did you mean 'gaussian_noise'",
        ),
        ({"terms": [{**KD, "student_view": "noisy"}]}, "unknown view 'noisy'"),
        (
            {"terms": [KD], "stages": [{"name": "warm", "epochs": 1, "lossses": {}}]},
            "key 'distill.stages.0.lossses': Extra inputs are not permitted",
        ),
        (
            {"terms": [{"method": "at", "student": ["stages.3"], "teacher": ["stages.1"]}]},
            "no module 'stages.3'; nearest valid paths: 'stages.1', 'stages.0'",
        ),
    ],
)
def test_a_bad_cell_stops_the_matrix_before_any_training(
    tmp_path: Path, no_training: None, distill: dict[str, Any], message: str
) -> None:
    proto = load_protocol(_protocol(tmp_path, distill))
    with pytest.raises(ConfigError, match=message) as err:
        run_matrix(proto, tmp_path / "out", progress=False)
    lines = str(err.value).splitlines()
    # one line for the bad cell (the other seeds build the same), none for the good ones
    assert lines[0] == "protocol 'checked': 3 of 12 cells would fail, nothing was trained:"
    assert len(lines) == 2 and lines[1].startswith("  cnn_medium-cnn_small/bad/seed0 (and 2 more")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("hooks", "message"),
    [
        ({"data": [{"hook": "few_shott", "per_class": 1}]}, "did you mean 'few_shot'"),
        ({"data": [{"hook": "few_shot", "per_clas": 1}]}, "no parameter 'per_clas'"),
        ({"data": [{"hook": "few_shot"}]}, "missing a required argument: 'per_class'"),
        ({"data": [{"hook": "few_shot", "per_class": 0}]}, "per_class must be an integer >= 1"),
        ({"data": [{"hook": "degrade_eval", "view": "blur"}]}, "no view 'blur'"),
        (
            {"methods": {"dd": {"recipe": "digits/vanilla", "pre": [{"hook": "pseudo_label"}]}}},
            "did you mean 'pseudo_labels'",
        ),
    ],
)
def test_hooks_are_checked_before_training(
    tmp_path: Path, no_training: None, hooks: dict[str, Any], message: str
) -> None:
    proto = load_protocol(_protocol(tmp_path, {"terms": [KD]}, **hooks))
    with pytest.raises(ConfigError, match=message):
        run_matrix(proto, tmp_path / "out", progress=False)


def test_cli_prints_one_line_per_failed_cell(
    tmp_path: Path, no_training: None, capsys: pytest.CaptureFixture
) -> None:
    path = _protocol(tmp_path, {"terms": [{"method": "kd", "TT": 2}]})
    assert main(["bench", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "did you mean 'T'" in err[1] and "Traceback" not in err[0]


def test_shipped_protocols_validate(tmp_path: Path, no_training: None) -> None:
    """The study protocols build in full (every cell, taps included); the demo's
    cross-architecture pair with every digits recipe's student taps renamed."""
    from kdlab.bench import expand  # noqa: PLC0415
    from kdlab.bench.check import check_matrix  # noqa: PLC0415

    bundles = bench_run.Bundles()
    for name, pairs in (("demo", ["cnn_medium-resnet8"]), ("fewshot", None), ("cqd", None)):
        proto = load_protocol(name, seeds=[0], pairs=pairs)
        check_matrix(proto, expand(proto, tmp_path), bundles)
    proto = load_protocol("omni", seeds=[0])
    check_matrix(proto, expand(proto, tmp_path), bundles)


def test_check_only_validates(
    tmp_path: Path, no_training: None, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert main(["bench", "digits-ci", "--check", "--out", str(out)]) == 0
    assert "'digits-ci': all 8 runs build; nothing was trained" in capsys.readouterr().out
    assert not out.exists()
