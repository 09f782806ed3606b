"""The command line: parsing, version, listings, and one-line errors for bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kdlab import __version__
from kdlab.cli import all_parsers, build_parser, main
from kdlab.commands.ls import describe

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_may_follow_options() -> None:
    args = build_parser().parse_args(
        ["train", "r.yaml", "seed=1", "--resume", "train.epochs=2", "--nproc", "2", "a.b=c"]
    )
    assert args.resume and args.nproc == 2
    assert args.overrides == ["seed=1", "train.epochs=2", "a.b=c"]
    args = build_parser().parse_args(["protocol", "cqd", "--epochs", "1", "data.per_class=5"])
    assert args.overrides == ["data.per_class=5"] and args.epochs == 1  # a nested parser


def test_no_abbreviated_options_anywhere(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", "r.yaml", "--resum"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage: kdlab train" in err and "unrecognized arguments: --resum" in err
    parsers = all_parsers(build_parser())
    assert len(parsers) > 10 and all(not p.allow_abbrev for p in parsers)
    # Parsers built outside `kdlab` (protocol stand-alone entry points, benchmark scripts).
    for path in [*ROOT.joinpath("src").rglob("*.py"), *ROOT.joinpath("benchmarks").rglob("*.py")]:
        for call in re.findall(r"ArgumentParser\((.*)", path.read_text()):
            assert "allow_abbrev=False" in call, f"{path}: ArgumentParser without allow_abbrev"


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"kdlab {__version__}"


@pytest.mark.parametrize("what", ["models", "methods", "datasets", "views"])
def test_every_listed_name_has_a_description(what: str, capsys: pytest.CaptureFixture) -> None:
    from kdlab.data import DATASETS  # noqa: PLC0415
    from kdlab.methods import METHODS  # noqa: PLC0415
    from kdlab.models import MODELS  # noqa: PLC0415
    from kdlab.views import VIEWS  # noqa: PLC0415

    assert main(["ls", what]) == 0
    listed = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines())
    registry = {"models": MODELS, "methods": METHODS, "datasets": DATASETS, "views": VIEWS}[what]
    ours = [n for n, obj in registry.items() if obj.__module__.startswith("kdlab.")]
    assert len(ours) > 3  # (entries registered by tests or plugins are theirs to describe)
    blank = [n for n in ours if not describe(registry.get(n))]
    assert not blank, f"kdlab ls {what}: no description for {blank}"
    assert all(listed[n] == describe(registry.get(n)) for n in ours)


def test_model_kwargs_cannot_set_what_the_data_sets(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    recipe = tmp_path / "kd.yaml"
    recipe.write_text(
        "student: {name: cnn_tiny}\nteacher: {name: cnn_small}\ndata: {per_class: 2}\n"
        "distill: {terms: [{method: kd}]}\ntrain: {epochs: 1, progress: false}\n"
        f"output_dir: {tmp_path}\n"
    )
    assert main(["train", str(recipe), "teacher.kwargs.num_classes=5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdlab: error: model 'cnn_small': kwargs set num_classes=5, but ")
    assert "comes from the data (10)" in err and len(err.splitlines()) == 1
    assert main(["train", str(recipe), "student.kwargs.in_channels=3"]) == 2
    assert "in_channels comes from the data (1)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("run.distill.terms=[{method: kd}]", "run.distill: data distillation trains both runs"),
        ("run.teacher={name: cnn_medium}", "run.teacher: data distillation has no teacher"),
    ],
)
def test_pipeline_refuses_what_it_would_drop(
    override: str, words: str, capsys: pytest.CaptureFixture
) -> None:
    config = str(ROOT / "configs" / "digits" / "data_distillation.yaml")
    assert main(["pipeline", "data_distillation", config, override]) == 2
    assert capsys.readouterr().err.startswith(f"kdlab: error: {words}")
