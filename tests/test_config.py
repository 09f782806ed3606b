from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kdlab import recipes
from kdlab.config import RunConfig, apply_overrides, dump_config, load_config, read_yaml
from kdlab.errors import ConfigError, RegistryError
from kdlab.registry import Registry

MINIMAL = {"student": {"name": "cnn_small"}}


def test_registry_duplicate_and_did_you_mean() -> None:
    reg: Registry[int] = Registry("thing")
    reg.add("alpha", 1)
    with pytest.raises(RegistryError, match="already registered"):
        reg.add("alpha", 2)
    with pytest.raises(RegistryError, match="did you mean 'alpha'"):
        reg.get("alpah")
    assert reg.names() == ["alpha"] and "alpha" in reg and len(reg) == 1


def test_unknown_nested_key_did_you_mean() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'train\.optimizer\.lrr'.*'lr'"):
        load_config({**MINIMAL, "train": {"optimizer": {"lrr": 0.1}}})
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*'train'"):
        load_config({**MINIMAL, "trian": {}})


def test_wrong_type_and_range_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"'train\.epochs'"):
        load_config({**MINIMAL, "train": {"epochs": "many"}})
    with pytest.raises(ConfigError, match=r"'train\.optimizer\.lr'.*greater than 0"):
        load_config({**MINIMAL, "train": {"optimizer": {"lr": -1}}})
    with pytest.raises(ConfigError, match=r"'student'"):
        load_config({})


def test_overrides() -> None:
    data = {**MINIMAL, "distill": {"terms": [{"method": "ce"}, {"method": "kd", "T": 4}]}}
    out = apply_overrides(data, ["train.epochs=3", "distill.terms.1.T=2.5", "name=x"])
    assert out["train"]["epochs"] == 3 and out["distill"]["terms"][1]["T"] == 2.5
    assert data["distill"]["terms"][1]["T"] == 4  # input untouched
    cfg = load_config(data, ["train.optimizer.name=adamw"])
    assert isinstance(cfg, RunConfig) and cfg.train.optimizer.name == "adamw"
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides(data, ["distill.terms.5.T=1"])
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides(data, ["train.epochs"])


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml.*not valid YAML"):
        read_yaml(bad)
    evil = tmp_path / "evil.yaml"
    evil.write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(evil)


@pytest.mark.parametrize("name", recipes.names())
def test_every_shipped_recipe_validates(name: str) -> None:
    data = read_yaml(recipes.find(name))
    if "student" in data:  # protocol / space files are other formats
        cfg = load_config(name)
        from kdlab.methods import build_terms  # noqa: PLC0415

        build_terms(cfg.distill.terms)


def test_recipes_are_found_by_name_from_any_folder(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)  # no configs/ here: the shipped files are found
    assert recipes.find("digits/kd") == recipes.ROOT / "digits" / "kd.yaml"
    assert recipes.find("configs/digits/kd.yaml") == recipes.ROOT / "digits" / "kd.yaml"
    assert recipes.folder("configs/digits") == recipes.ROOT / "digits"
    assert load_config("digits/kd").teacher is not None
    assert "cifar100/resnet56-resnet20/kd" in recipes.names("cifar100")
    with pytest.raises(ConfigError, match="no recipe 'digits/kdd'.*did you mean 'digits/kd'"):
        recipes.find("digits/kdd")
    with pytest.raises(ConfigError, match="config file 'mine.yaml' does not exist"):
        load_config("mine.yaml")
    (tmp_path / "mine.yaml").write_text("student: {name: mlp}\n")
    assert load_config("mine.yaml").student.name == "mlp"


def test_repository_configs_only_link_to_the_shipped_recipes() -> None:
    # configs/<dataset> are symlinks kept for documented paths; recipes added there as
    # real files (e.g. by a merge) would not ship with kdlab: move them to recipes/.
    root = Path(__file__).resolve().parents[1] / "configs"
    if not root.is_dir():
        pytest.skip("not a source checkout")
    entries = sorted(root.iterdir())
    assert [e.name for e in entries if not e.is_symlink()] == []
    assert sorted(e.resolve() for e in entries) == sorted(
        p for p in recipes.ROOT.iterdir() if p.is_dir() and not p.name.startswith("__")
    )


def _kd_recipe(**distill: Any) -> dict[str, Any]:
    return {
        "student": {"name": "cnn_tiny"},
        "teacher": {"name": "cnn_small"},
        "distill": {"terms": [{"method": "ce"}, {"method": "kd", "T": 2}], **distill},
    }


def test_load_recipe_validates_terms_views_and_stages_into_typed_objects() -> None:
    from kdlab.config import StageConfig, ViewSpec  # noqa: PLC0415
    from kdlab.methods.kd import KDParams  # noqa: PLC0415

    cfg = load_config(
        _kd_recipe(
            views={"noisy": {"type": "gaussian_noise", "sigma": 0.2}},
            stages=[{"name": "warm", "epochs": 1, "losses": {"kd": 1.0}}],
        ),
        ["distill.terms.kd.student_view=noisy"],
    )
    kd = cfg.distill.terms[1]
    assert isinstance(kd, KDParams) and kd.T == 2.0 and kd["T"] == 2.0
    assert kd.student_view == "noisy"
    assert cfg.distill.views["noisy"] == ViewSpec(type="gaussian_noise", sigma=0.2)
    assert isinstance(cfg.distill.stages[0], StageConfig)
    # what a run folder keeps loads back into the same recipe
    assert load_config(yaml.safe_load(dump_config(cfg))) == cfg


@pytest.mark.parametrize(
    ("distill", "words"),
    [
        ({"terms": [{"method": "kd", "temp": 2}]}, "unknown key 'distill.terms.0 (kd).temp'"),
        ({"terms": [{"method": "kdd"}]}, "unknown method 'kdd'; did you mean 'kd'"),
        (
            {"views": {"n": {"type": "gaussian_noise", "sigma": -1}}},
            "gaussian_noise: sigma must be a finite number >= 0",
        ),
        ({"views": {"n": {"type": "noise"}}}, "unknown view 'noise'"),
        ({"views": {"n": {"type": "downsample", "sise": 4}}}, "distill.views.n (downsample)"),
        (
            {"terms": [{"method": "kd", "teacher_view": "clean"}]},
            "distill.terms.0.teacher_view: unknown view 'clean'",
        ),
        (
            {"stages": [{"name": "w", "epochs": 1, "losses": {"kdd": 1}}]},
            "distill.stages.0.losses: unknown loss 'kdd'; did you mean 'kd'",
        ),
        (
            {"stages": [{"name": "w", "epochs": 1, "losses": {"kd.hint": 1}}]},
            "term 'kd' (kd) has no loss mode 'hint'",
        ),
        (
            {"stages": [{"name": "main", "epochs": 1, "losses": {"kd": 1}}]},
            "stage names must be unique and not 'main'",
        ),
        ({"terms": [{"method": "ce"}, {"method": "ce"}]}, "a term named 'ce' already exists"),
    ],
)
def test_load_recipe_refuses_bad_terms_views_and_stages(distill: dict, words: str) -> None:
    with pytest.raises((ConfigError, RegistryError), match=re.escape(words)):
        load_config(_kd_recipe(**distill))


def test_one_dotted_setter_for_overrides_and_search_spaces() -> None:
    from kdlab.tune import apply_params  # noqa: PLC0415

    data = _kd_recipe()
    by_cli = apply_overrides(data, ["distill.terms.kd.T=3", "distill.terms.-1.weight=0.5"])
    by_space = apply_params(data, {"distill.terms.kd.T": 3, "distill.terms.-1.weight": 0.5})
    assert by_cli == by_space
    assert by_cli["distill"]["terms"][1] == {"method": "kd", "T": 3, "weight": 0.5}
    assert load_config(data, ["distill.terms.kd.T=3"]).distill.terms[1].T == 3.0
