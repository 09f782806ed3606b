"""Protocols (bench specs): arms x pairs x conditions x seeds, each arm a named recipe.

This module reads and validates a protocol and resolves its recipes;
:mod:`kdlab.bench.matrix` expands it into runs.

Every study in kdlab is a protocol run by ``kdlab bench``: the demo, the digits,
Fashion-MNIST, CIFAR-100 and ImageNet benchmarks, few-shot, cross quality, data
distillation and metric learning (scored by the engine's retrieval evaluator). Shipped
protocols live in ``kdlab/bench/protocols/<name>.yaml`` (package data); any other YAML
path is a user-defined one. Format::

    name: digits
    title: every digits recipe, teachers per seed     # one line for --list
    description: ...
    base: {data: ..., train: ...}      # a partial RunConfig shared by every run
    epochs: 15                         # students' train.epochs (overrides base)
    teacher_epochs: 20                 # teachers' epochs (default: epochs)
    teacher_train: {schedule: ...}     # teachers' train overrides
    teacher_seed: 0                    # one teacher for every seed (default: one per seed)
    teacher_recipe: digits/triplet     # teachers' distill section (default: cross-entropy)
    seeds: [0, 1, 2]
    pairs:
      - name: cnn_medium-resnet8       # default: "<teacher>-<student>"
        teacher: {name: cnn_medium}    # a ModelConfig; with 'checkpoint' it is not trained
        student: {name: resnet8}
        taps: {at: {teacher: [layer2]}}          # per-term overrides, by method or term name
        student_taps: {stages.0: layer1.0}       # rename student tap prefixes
        reference: {teacher: 75.6, kd: 74.9}     # published numbers
    methods:                           # arms: a recipe name, or a recipe with changes
      kd: digits/kd
      kd+jacobian: {recipe: digits/jacobian, terms: {jacobian: {weight: 3.0}}}
      dd: {recipe: digits/vanilla, pre: [{hook: pseudo_labels, threshold: 0.5}]}
    recipes: cifar100/{pair}           # every recipe in this folder that has a teacher is
    exclude: [cqd]                     # an arm named after its file ('{pair}': the pair)
    baseline: {name: labels only, recipe: digits/cqd, without: [cqd]}   # default: vanilla
                                       # ({teacher: true}: the teacher's run is the baseline)
    data: [{hook: few_shot, per_class: 5}]      # students' data hooks (kdlab.bench.hooks)
    teacher_data: [...]                         # teachers' data hooks
    conditions:                        # optional axis: variants of the students' runs
      blur: {label: blur sigma 1, data: [...], set: {distill.views.degraded: {...}}}
    extra_metrics: [recall@5]          # tabled beside the selection metric (base.train
                                       # .evaluator names the evaluator and its metrics)

A protocol never restates a recipe: an arm takes the named recipe's ``distill`` section
(terms, views, stages); models, data and schedule are the protocol's. Recipe names
resolve under the shipped recipes (:mod:`kdlab.recipes`); a file or folder next to the
protocol file wins, then the current folder. The baseline
(``vanilla``: the student alone, cross-entropy only, unless ``baseline`` says otherwise)
is always part of the matrix: every gain is measured against it, seed by seed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from kdlab import recipes
from kdlab.config import (
    ModelConfig,
    Strict,
    read_yaml,
    validate,
)
from kdlab.errors import ConfigError, did_you_mean

VANILLA = "vanilla"
TEACHER = "teacher"
BASELINE = "baseline"
METHOD = "method"
CE_ONLY: dict[str, Any] = {"terms": [{"method": "ce"}]}


class PairSpec(Strict):
    name: str | None = None
    teacher: ModelConfig
    student: ModelConfig
    taps: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-term overrides by method or term name"
    )
    student_taps: dict[str, str] = Field(
        default_factory=dict, description="student tap prefixes renamed (old: new)"
    )
    reference: dict[str, float] = Field(
        default_factory=dict, description="published top-1 by method (teacher, student, kd...)"
    )

    @property
    def label(self) -> str:
        return self.name or f"{self.teacher.name}-{self.student.name}"


class ArmSpec(Strict):
    recipe: str = Field(description="a recipe name (digits/kd) or a .yaml path")
    terms: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-term overrides by method or term name"
    )
    without: list[str] = Field(default_factory=list, description="terms to drop")
    pre: list[dict[str, Any]] = Field(default_factory=list, description="pre-step hooks")


class BaselineSpec(Strict):
    name: str = VANILLA
    recipe: str | None = Field(None, description="default: cross-entropy alone")
    terms: dict[str, dict[str, Any]] = Field(default_factory=dict)
    without: list[str] = Field(default_factory=list)
    teacher: bool = Field(False, description="the teacher's own run is the baseline")


class ConditionSpec(Strict):
    label: str = ""
    data: list[dict[str, Any]] = Field(default_factory=list, description="more data hooks")
    set: dict[str, Any] = Field(
        default_factory=dict, description="dotted overrides of the students' recipes"
    )


class ProtocolSpec(Strict):
    name: str
    title: str = Field("", description="one line for 'kdlab bench --list'")
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    epochs: int | None = Field(None, ge=1)
    teacher_epochs: int | None = Field(None, ge=1)
    teacher_train: dict[str, Any] = Field(
        default_factory=dict, description="train section overrides for teachers"
    )
    teacher_seed: int | None = Field(None, ge=0, description="one teacher for all seeds")
    teacher_recipe: str | None = Field(None, description="teachers' distill (default: CE)")
    seeds: list[int] = Field(default_factory=lambda: [0])
    pairs: list[PairSpec] = Field(min_length=1)
    baseline: BaselineSpec = BaselineSpec()
    methods: dict[str, str | ArmSpec] = Field(default_factory=dict)
    recipes: str | None = None
    exclude: list[str] = Field(
        default_factory=list, description="recipe names in 'recipes' to leave out"
    )
    data: list[dict[str, Any]] = Field(default_factory=list, description="students' data hooks")
    teacher_data: list[dict[str, Any]] = Field(default_factory=list)
    conditions: dict[str, ConditionSpec] = Field(default_factory=dict)
    extra_metrics: list[str] = Field(
        default_factory=list, description="more test metrics for the table (recall@5, acc5)"
    )
    reference_note: str = ""

    @model_validator(mode="before")
    @classmethod
    def _no_inline_recipes(cls, data: Any) -> Any:
        methods = data.get("methods") if isinstance(data, dict) else None
        for name, entry in (methods or {}).items():
            if isinstance(entry, dict) and isinstance(entry.get("terms"), list):
                raise ValueError(
                    f"methods.{name} restates a recipe's terms; protocols name recipes: put "
                    f"them in a recipe file and write '{name}: path/to/recipe.yaml'"
                )
        return data


@dataclass
class Arm:
    """One arm of a pair: its recipe's distill section with the protocol's changes."""

    name: str
    source: str  # the recipe file it came from ('' for built-in cross-entropy)
    distill: dict[str, Any]
    pre: list[dict[str, Any]] = field(default_factory=list)
    teacher: bool = True  # its runs load the pair's teacher (the recipe names one)


@dataclass
class Protocol:
    """A validated protocol, where it was read from, and every pair's arms."""

    spec: ProtocolSpec
    path: Path
    arms: dict[str, dict[str, Arm]]  # pair label -> arm name -> arm (baseline excluded)
    baseline: dict[str, Arm]  # pair label -> the baseline arm
    teacher_distill: dict[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def methods(self) -> list[str]:
        """Arm names over all pairs, in protocol order (the baseline excluded)."""
        names: list[str] = []
        for arms in self.arms.values():
            names += [m for m in arms if m not in names]
        return names

    @property
    def baseline_name(self) -> str:
        return self.spec.baseline.name


# ---------------------------------------------------------------- seeds


def parse_seeds(items: Sequence[str | int]) -> list[int]:
    """Seeds as given on any command line: ``0 1 2``, ``0,1,2`` or ``0-2`` (inclusive)."""
    seeds: list[int] = []
    for item in items:
        for part in str(item).replace(",", " ").split():
            lo, sep, hi = part.partition("-")
            try:
                values = range(int(lo), int(hi) + 1) if sep and lo else [int(part)]
            except ValueError:
                values = []
            if not values or any(v < 0 or v >= 2**32 for v in values):
                raise ConfigError(
                    f"--seeds: {part!r} is not a seed or range; give integers >= 0 such as "
                    "'0 1 2', '0,1,2' or '0-2'"
                )
            for v in values:
                if v in seeds:
                    raise ConfigError(f"--seeds: seed {v} is given twice")
                seeds.append(v)
    if not seeds:
        raise ConfigError("--seeds needs at least one seed")
    return seeds


def split_names(items: Sequence[str] | None) -> list[str] | None:
    """``--methods kd at`` and ``--methods kd,at`` alike; ``all`` (or nothing): every one."""
    names = [n for item in items or [] for n in item.replace(",", " ").split()]
    return None if not names or names == ["all"] else names


# ---------------------------------------------------------------- loading


def builtin_protocols() -> list[str]:
    """Names of the protocols shipped with kdlab."""
    folder = resources.files("kdlab.bench") / "protocols"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def protocol_path(name_or_path: str | Path) -> Path:
    """A shipped protocol's file by name, or the given YAML path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"protocol file {str(path)!r} does not exist")
        return path
    names = builtin_protocols()
    if str(name_or_path) not in names:
        raise ConfigError(
            f"unknown protocol {str(name_or_path)!r}; {did_you_mean(str(name_or_path), names)}"
            " (or give a path to a protocol YAML file)"
        )
    return Path(str(resources.files("kdlab.bench") / "protocols" / f"{name_or_path}.yaml"))


def recipe_file(ref: str, base_dir: Path) -> Path:
    """A recipe named by a protocol: a file next to the protocol, or :func:`recipes.find`
    (a path from the current folder, or a shipped name such as ``digits/kd``)."""
    near = base_dir / ref
    return near if near.is_file() else recipes.find(ref)


def recipe_folder(ref: str, base_dir: Path) -> Path:
    near = base_dir / ref
    return near if near.is_dir() else recipes.folder(ref)


def _distill_of(ref: str, base_dir: Path, where: str) -> tuple[dict[str, Any], str, bool]:
    """A recipe's distill section, its file, and whether it names a teacher."""
    try:
        path = recipe_file(ref, base_dir)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    data = read_yaml(path)
    distill = data.get("distill")
    if not isinstance(distill, dict) or not distill.get("terms"):
        raise ConfigError(f"{where}: recipe {str(path)!r} has no 'distill.terms'")
    return copy.deepcopy(distill), str(path), bool(data.get("teacher"))


def _term_keys(term: dict[str, Any]) -> tuple[Any, Any]:
    return term.get("name"), term.get("method")


def override_terms(
    terms: list[dict[str, Any]], changes: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Terms with per-term changes applied; a change is keyed by term name or method."""
    out = copy.deepcopy(terms)
    for term in out:
        for key in _term_keys(term):
            if key is not None and key in changes:
                term.update(copy.deepcopy(changes[key]))
                break
    return out


def rename_student_taps(distill: dict[str, Any], tap_map: dict[str, str]) -> dict[str, Any]:
    """A copy of a ``distill`` section with student tap paths renamed by prefix."""

    def rename(tap: str) -> str:
        for old, new in tap_map.items():
            if tap == old or tap.startswith((old + ".", old + ":")):
                return new + tap[len(old) :]
        return tap

    out = copy.deepcopy(distill)
    for term in out.get("terms", []):
        if isinstance(term.get("student"), list):
            term["student"] = [rename(t) for t in term["student"]]
    return out


def _arm(name: str, entry: str | ArmSpec | BaselineSpec, base_dir: Path, where: str) -> Arm:
    spec = ArmSpec(recipe=entry) if isinstance(entry, str) else entry
    if spec.recipe is None:  # the built-in baseline
        distill, source, teacher = copy.deepcopy(CE_ONLY), "", False
    else:
        distill, source, teacher = _distill_of(spec.recipe, base_dir, where)
    known = {k for t in distill["terms"] for k in _term_keys(t) if k is not None}
    for key in [*spec.without, *spec.terms]:
        if key not in known:
            raise ConfigError(
                f"{where}: the recipe has no term {key!r}; {did_you_mean(key, known)}"
            )
    terms = [t for t in distill["terms"] if not set(_term_keys(t)) & set(spec.without)]
    distill["terms"] = override_terms(terms, spec.terms)
    return Arm(name, source, distill, list(getattr(spec, "pre", [])), teacher)


def _folder_arms(spec: ProtocolSpec, pair: str, base_dir: Path) -> dict[str, Arm]:
    if not spec.recipes:
        return {}
    folder = recipe_folder(spec.recipes.replace("{pair}", pair), base_dir)
    found = {}
    for recipe in sorted(folder.glob("*.yaml")):
        if recipe.name.startswith(("_", ".")) or recipe.stem in spec.exclude:
            continue  # private / scratch files, or left out by the protocol
        data = read_yaml(recipe)
        if data.get("teacher") and (data.get("distill") or {}).get("terms"):
            found[recipe.stem] = Arm(recipe.stem, str(recipe), copy.deepcopy(data["distill"]))
    return found


def load_protocol(
    name_or_path: str | Path,
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    pairs: list[str] | None = None,
    conditions: list[str] | None = None,
) -> Protocol:
    """Read and validate a protocol and resolve its recipes.

    ``methods``, ``pairs`` and ``conditions`` keep only those; ``seeds`` replaces the
    protocol's own (the baseline and teachers are always kept).
    """
    path = protocol_path(name_or_path)
    spec = validate(ProtocolSpec, read_yaml(path), where=f"protocol {path.name}")
    base_dir = path.parent
    where = f"protocol {spec.name!r}"
    labels = [p.label for p in spec.pairs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: pair names must be unique, got {labels}")
    if pairs is not None:
        _check_subset("pair", pairs, labels, where)
        spec.pairs = [p for p in spec.pairs if p.label in pairs]
    if conditions is not None:
        _check_subset("condition", conditions, list(spec.conditions), where)
        spec.conditions = {k: v for k, v in spec.conditions.items() if k in conditions}
    if seeds is not None:
        spec.seeds = parse_seeds(seeds)
    reserved = {TEACHER, spec.baseline.name}
    arms: dict[str, dict[str, Arm]] = {}
    baseline: dict[str, Arm] = {}
    for pair in spec.pairs:
        found = _folder_arms(spec, pair.label, base_dir)
        for name, entry in spec.methods.items():
            found[name] = _arm(name, entry, base_dir, f"{where}, method {name!r}")
        clash = reserved & set(found)
        if clash:
            raise ConfigError(f"{where}: method name {sorted(clash)[0]!r} is reserved")
        arms[pair.label] = found
        baseline[pair.label] = _arm(
            spec.baseline.name, spec.baseline, base_dir, f"{where}, baseline"
        )
    teacher_distill = copy.deepcopy(CE_ONLY)
    if spec.teacher_recipe:
        teacher_distill = _distill_of(spec.teacher_recipe, base_dir, f"{where}, teacher_recipe")[0]
    proto = Protocol(spec, path, arms, baseline, teacher_distill)
    if methods is not None:
        wanted = [m for m in methods if m != spec.baseline.name]
        _check_subset("method", wanted, proto.methods, where)
        proto.arms = {p: {m: a[m] for m in wanted if m in a} for p, a in arms.items()}
    return proto


def _check_subset(what: str, given: list[str], valid: list[str], where: str) -> None:
    for name in given:
        if name not in valid:
            raise ConfigError(f"{where} has no {what} {name!r}; {did_you_mean(name, valid)}")
