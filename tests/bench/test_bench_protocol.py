"""Protocols: loading, recipes by name, expansion into cells, cache keys, --seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kdlab.bench import builtin_protocols, config_hash, expand, load_protocol, parse_seeds
from kdlab.bench.protocol import BASELINE, METHOD, TEACHER, ProtocolSpec, protocol_path, recipe_file
from kdlab.config import DistillConfig, read_yaml, validate
from kdlab.errors import ConfigError
from kdlab.methods import METHODS, build_terms
from kdlab.recipes import ROOT as RECIPES

ROOT = Path(__file__).resolve().parents[2]
KD = {"terms": [{"method": "ce", "weight": 0.1}, {"method": "kd", "T": 4.0}]}


def write_recipe(path: Path, distill: dict[str, Any], teacher: bool = True) -> Path:
    data: dict[str, Any] = {"student": {"name": "cnn_small"}, "distill": distill}
    if teacher:
        data["teacher"] = {"name": "cnn_medium"}
    path.write_text(yaml.safe_dump(data))
    return path


def write_protocol(path: Path, **changes: object) -> Path:
    """A tiny digits protocol; its 'kd' arm is a recipe file next to it."""
    write_recipe(path.parent / "my_kd.yaml", KD)
    data = {
        "name": "tiny",
        "base": {"data": {"name": "digits"}, "train": {"device": "cpu", "threads": 1}},
        "epochs": 1,
        "seeds": [0, 1],
        "pairs": [{"teacher": {"name": "cnn_medium"}, "student": {"name": "cnn_small"}}],
        "methods": {"kd": "my_kd.yaml"},
    }
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return path


def _terms(cfg: Any) -> list[dict[str, Any]]:
    """A run's terms as its recipe would write them (validated defaults left out)."""
    return [t.model_dump(mode="json", exclude_defaults=True) for t in cfg.distill.terms]


# ------------------------------------------------------------------ shipped protocols


def test_shipped_protocols_are_listed() -> None:
    names = set(builtin_protocols())
    assert {"digits", "digits-ci", "cifar100", "fashion", "demo", "fewshot", "cqd"} <= names
    assert "omni" in names


@pytest.mark.parametrize("name", ["digits", "digits-ci", "cifar100", "demo", "fewshot", "cqd"])
def test_shipped_protocols_expand_to_valid_configs(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # recipes are found by name, not relative to a checkout
    proto = load_protocol(name)
    runs = expand(proto, tmp_path)
    spec = proto.spec
    n_cond = max(1, len(spec.conditions))
    students = sum(1 + len(proto.arms[p.label]) for p in spec.pairs) * n_cond * len(spec.seeds)
    teachers = len(spec.pairs) * (1 if spec.teacher_seed is not None else len(spec.seeds))
    assert len(runs) == students + teachers
    for run in runs:
        terms = [t["method"] for t in run.cfg.distill.terms]
        if all(m in METHODS for m in terms):  # methods still on other branches are skipped
            build_terms(run.cfg.distill.terms)  # term params validate (tap names, keys)


def _shipped_cells() -> list[tuple[str, str, str]]:
    cells = []
    for name in builtin_protocols():
        proto = load_protocol(name)
        cells += [(name, pair, arm) for pair, arms in proto.arms.items() for arm in arms]
    return cells


def test_every_shipped_cell_is_its_recipe() -> None:
    """Protocols name recipes and never restate them: every (protocol, pair, method)
    resolves to its recipe's distill section, changed only where the protocol declares a
    change (a pair's tap overrides, an arm's term overrides, a condition's 'set')."""
    checked = 0
    for name in builtin_protocols():
        path = protocol_path(name)
        raw = read_yaml(path)
        spec = validate(ProtocolSpec, raw)
        proto = load_protocol(name, seeds=[0])  # seeds change no term
        for cell in expand(proto, Path("/x")):
            if cell.kind != METHOD:
                continue
            arm = proto.arms[cell.pair][cell.method]
            entry = spec.methods.get(cell.method)
            ref = entry if isinstance(entry, str) else (entry.recipe if entry else None)
            source = recipe_file(ref, path.parent) if ref else Path(arm.source)
            assert source.resolve().is_relative_to(RECIPES.resolve()), (name, cell.label)
            raw_recipe = read_yaml(source)["distill"]
            sets = spec.conditions[cell.condition].set if cell.condition else {}
            for dotted, value in sets.items():  # a condition's declared views
                raw_recipe.setdefault("views", {})[dotted.split(".")[-1]] = value
            # both sides validated, so defaults written out or left out compare equal
            recipe = validate(DistillConfig, raw_recipe).model_dump(mode="json")
            pair = next(p for p in spec.pairs if p.label == cell.pair)
            declared: dict[str, set[str]] = {}
            for changes in (pair.taps, {} if isinstance(entry, str) or not entry else entry.terms):
                for term, keys in changes.items():
                    declared.setdefault(term, set()).update(keys)
            got = cell.cfg.distill.model_dump(mode="json")
            assert len(got["terms"]) == len(recipe["terms"]), (name, cell.label)
            for mine, theirs in zip(got["terms"], recipe["terms"]):
                changed = declared.get(theirs.get("name"), set()) | declared.get(
                    theirs["method"], set()
                )
                if pair.student_taps:
                    changed |= {"student"}
                for key in set(mine) | set(theirs):
                    if key not in changed:
                        assert mine.get(key) == theirs.get(key), (name, cell.label, key)
            assert got["views"] == recipe["views"], (name, cell.label)
            assert got["stages"] == recipe["stages"], (name, cell.label)
            checked += 1
    assert checked > 98  # cifar100 alone has 7 pairs x 14 methods


@pytest.mark.parametrize(("name", "n"), [("cifar100", 14), ("imagenet", 12)])
def test_reference_protocols_restate_nothing(name: str, n: int) -> None:
    raw = read_yaml(protocol_path(name))
    assert "methods" not in raw and all("taps" not in p for p in raw["pairs"])
    proto = load_protocol(name)
    for pair, arms in proto.arms.items():
        assert len(arms) == n, pair
        for method, arm in arms.items():
            assert Path(arm.source) == RECIPES / name / pair / f"{method}.yaml"
            assert arm.distill == read_yaml(arm.source)["distill"]


# ------------------------------------------------------------------ loading


def test_protocol_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'digits'"):
        load_protocol("digitz")
    with pytest.raises(ConfigError, match="no method 'kdd'.*'kd'"):
        load_protocol("digits-ci", methods=["kdd"])
    with pytest.raises(ConfigError, match="no pair 'cnn_medium-cnn_smal'"):
        load_protocol("demo", pairs=["cnn_medium-cnn_smal"])
    with pytest.raises(ConfigError, match="reserved"):
        load_protocol(write_protocol(tmp_path / "p.yaml", methods={"vanilla": "my_kd.yaml"}))
    with pytest.raises(ConfigError, match="unknown key 'protocol q.yaml.epoch'.*'epochs'"):
        load_protocol(write_protocol(tmp_path / "q.yaml", epoch=3))
    with pytest.raises(ConfigError, match="method 'kd': no recipe 'digits/kdd'.*'digits/kd'"):
        load_protocol(write_protocol(tmp_path / "r.yaml", methods={"kd": "digits/kdd"}))
    with pytest.raises(ConfigError, match="no term 'jacobain'; did you mean 'jacobian'"):
        load_protocol(
            write_protocol(
                tmp_path / "s.yaml",
                methods={"j": {"recipe": "digits/jacobian", "terms": {"jacobain": {"weight": 1}}}},
            )
        )
    with pytest.raises(ConfigError, match="methods.kd.*terms"):  # no inline distill sections
        load_protocol(write_protocol(tmp_path / "t.yaml", methods={"kd": KD}))


def test_an_arm_is_its_recipes_distill_section(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "mine.yaml", {"terms": [{"method": "kd", "T": 2.0}]})
    data = read_yaml(recipe)
    data["train"] = {"epochs": 99}
    recipe.write_text(yaml.safe_dump(data))
    proto = load_protocol(write_protocol(tmp_path / "p.yaml", methods={"mine": "mine.yaml"}))
    run = [r for r in expand(proto, tmp_path) if r.method == "mine"][0]
    assert _terms(run.cfg) == [{"method": "kd", "T": 2.0}]
    assert run.cfg.train.epochs == 1  # the protocol's schedule, not the recipe's


def test_arm_changes_pair_taps_and_renamed_student_taps(tmp_path: Path) -> None:
    path = write_protocol(
        tmp_path / "p.yaml",
        methods={
            "j": {
                "recipe": "digits/jacobian",
                "without": ["kd"],
                "terms": {"jacobian": {"weight": 3.0}},
            }
        },
        pairs=[
            {
                "teacher": {"name": "cnn_medium"},
                "student": {"name": "resnet8"},
                "taps": {"ce": {"weight": 0.5}},
                "student_taps": {"stages.0": "layer1.0"},
            }
        ],
    )
    proto = load_protocol(path, methods=["j"])
    terms = proto.arms["cnn_medium-resnet8"]["j"].distill["terms"]
    assert [t["method"] for t in terms] == ["ce", "jacobian"] and terms[1]["weight"] == 3.0
    runs = {r.method: r for r in expand(proto, tmp_path) if r.seed == 0}
    assert _terms(runs["j"].cfg)[0] == {"method": "ce", "weight": 0.5}
    at = load_protocol("demo", methods=["at"], pairs=["cnn_medium-resnet8"])
    cell = [r for r in expand(at, tmp_path) if r.method == "at"][0]
    assert cell.cfg.distill.terms[1]["student"] == ["layer1.0", "layer2.0"]  # from stages.0/1


def test_recipes_folder_with_exclusions(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    folder.mkdir()
    for name in ("a", "b", "_scratch"):
        write_recipe(folder / f"{name}.yaml", {"terms": [{"method": "kd"}]})
    write_recipe(folder / "teacher.yaml", {"terms": [{"method": "ce"}]}, teacher=False)
    proto = load_protocol(write_protocol(tmp_path / "p.yaml", recipes="recipes", exclude=["b"]))
    assert proto.methods == ["a", "kd"]  # no teacher recipe, no '_' file, no 'b'


# ------------------------------------------------------------------ expansion


def test_cache_keys_name_the_folders(tmp_path: Path) -> None:
    proto = load_protocol(write_protocol(tmp_path / "p.yaml"))
    runs = expand(proto, tmp_path / "out")
    teachers = [r for r in runs if r.kind == TEACHER]
    kd = [r for r in runs if r.method == "kd"]
    assert [t.seed for t in teachers] == [0, 1]
    for t, k in zip(teachers, kd):
        # the distillation run of a seed reads the teacher trained with that seed
        assert k.teacher is t and k.cfg.teacher.checkpoint == str(t.run_dir)
        assert t.run_dir.name == f"cnn_medium-seed{t.seed}-{t.key}"
        assert k.run_dir == tmp_path / "out" / "runs" / k.pair / "kd" / f"seed{k.seed}-{k.key}"
    # a change that matters gives other keys; names and folders do not matter
    other = load_protocol(write_protocol(tmp_path / "q.yaml", teacher_epochs=3))
    runs2 = expand(other, tmp_path / "out")
    assert runs2[0].run_dir != teachers[0].run_dir
    assert [r.key for r in runs2 if r.method == "vanilla"] == [
        r.key for r in runs if r.method == "vanilla"
    ]
    assert [r.key for r in runs2 if r.method == "kd"] != [r.key for r in kd]  # its teacher
    moved = expand(proto, tmp_path / "moved")
    assert [r.key for r in moved] == [r.key for r in runs]
    renamed = teachers[0].cfg.model_copy(update={"name": "x", "output_dir": "elsewhere"})
    assert config_hash(renamed) == config_hash(teachers[0].cfg)


def test_shared_teacher_conditions_and_baselines(tmp_path: Path) -> None:
    few = load_protocol("fewshot", methods=["kd"], seeds=["0-1"], conditions=["n1", "n5"])
    runs = expand(few, tmp_path)
    assert [r.label for r in runs] == [
        "cnn_medium-cnn_small/teacher/seed0",
        "cnn_medium-cnn_small/n1/vanilla/seed0",
        "cnn_medium-cnn_small/n1/kd/seed0",
        "cnn_medium-cnn_small/n5/vanilla/seed0",
        "cnn_medium-cnn_small/n5/kd/seed0",
        "cnn_medium-cnn_small/n1/vanilla/seed1",
        "cnn_medium-cnn_small/n1/kd/seed1",
        "cnn_medium-cnn_small/n5/vanilla/seed1",
        "cnn_medium-cnn_small/n5/kd/seed1",
    ]
    assert {r.teacher.seed for r in runs if r.kind == METHOD} == {0}  # teacher_seed: 0
    assert runs[1].data == [{"hook": "few_shot", "per_class": 1, "epoch_samples": 256}]
    assert runs[1].key != runs[3].key  # the hooks are part of the key
    cqd = expand(load_protocol("cqd", seeds=[0], conditions=["blur1"]), tmp_path)
    base = next(r for r in cqd if r.kind == BASELINE)
    assert base.method == "labels only" and base.cfg.teacher is None
    assert _terms(base.cfg) == [{"method": "ce", "student_view": "degraded", "weight": 1.0}]
    views = base.cfg.distill.model_dump(mode="json")["views"]
    assert views == {"degraded": {"type": "gaussian_blur", "sigma": 1.0}}
    omni = expand(load_protocol("omni", seeds=[2]), tmp_path)
    teacher, supervised, dd = omni
    assert supervised.kind == BASELINE and supervised.run_dir == teacher.run_dir
    assert supervised.method == "supervised only" and teacher.cfg.train.epochs == 150
    # the data distillation student has no teacher term, but its pre-step reads the
    # teacher: the teacher is part of its key, not of its recipe
    assert dd.cfg.teacher is None and dd.teacher is teacher
    other = load_protocol("omni", seeds=[2])
    other.spec.teacher_epochs = 151  # only the teacher changes
    changed = expand(other, tmp_path)
    assert changed[2].cfg == dd.cfg and changed[2].key != dd.key


# ------------------------------------------------------------------ seeds


@pytest.mark.parametrize(
    ("given", "seeds"),
    [
        (["0", "1", "2"], [0, 1, 2]),
        (["0,1,2"], [0, 1, 2]),
        (["0-2"], [0, 1, 2]),
        (["3"], [3]),
        (["5", "0-1"], [5, 0, 1]),
        ([7, 8], [7, 8]),
    ],
)
def test_one_seeds_syntax(given: list[str], seeds: list[int]) -> None:
    assert parse_seeds(given) == seeds


@pytest.mark.parametrize("bad", [["x"], ["1-"], ["-1"], ["2-1"], ["0", "0"], [], ["1.5"]])
def test_bad_seeds_are_one_line_errors(bad: list[str]) -> None:
    with pytest.raises(ConfigError, match="--seeds") as err:
        parse_seeds(bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "argv",
    [
        "bench cqd a=1 --seeds 0 1 b=2 --methods cqd",
        "bench cqd --seeds 0,1 a=1 b=2 --methods cqd",
        "demo --seeds 0-1 a=1 --methods cqd b=2",
    ],
)
def test_seeds_and_overrides_mix_on_any_command_line(argv: str) -> None:
    from kdlab.cli import build_parser  # noqa: PLC0415
    from kdlab.commands.bench import overrides_of  # noqa: PLC0415

    args = build_parser().parse_args(argv.split())
    assert parse_seeds(args.seeds) == [0, 1] and args.methods == ["cqd"]
    assert overrides_of(args) == ["a=1", "b=2"]
