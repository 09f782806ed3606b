"""Benchmark protocols: a YAML file naming a base recipe, pairs, methods and seeds.

A protocol is expanded into a matrix of run configs (methods x pairs x seeds) plus
the teachers and vanilla students they are compared with. Shipped protocols live in
``kdlab/bench/protocols/<name>.yaml`` (package data); any other YAML path is a
user-defined protocol. Format::

    name: digits
    description: ...
    base: {data: ..., train: ...}      # a partial RunConfig shared by every run
    epochs: 15                         # train.epochs of students (overrides base)
    teacher_epochs: 20                 # teachers' epochs (default: epochs)
    seeds: [0, 1, 2]
    pairs:
      - name: cnn_medium-cnn_small     # default: "<teacher>-<student>"
        teacher: {name: cnn_medium}    # a ModelConfig; with 'checkpoint' it is not trained
        student: {name: cnn_small}
        taps:                          # per-pair tap overrides, by method or term name
          at: {student: [stages.0], teacher: [stages.1]}
        reference: {teacher: 75.6, student: 73.3, kd: 74.9}   # published numbers
    methods:
      kd: configs/digits/kd.yaml       # a recipe file: its 'distill' section is used
      logits: {terms: [{method: logits}]}   # or an inline distill section
    recipes: configs/digits            # optional: every recipe here with a teacher is
                                       # a method named after its file stem (files
                                       # starting with '_' are skipped)
    exclude: [cqd]                     # recipes in that folder to leave out

Relative paths are looked up next to the protocol file first, then in the current
folder. ``vanilla`` (the student alone, cross-entropy only) is always part of the
matrix: every gain is measured against it, seed by seed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import Field

from kdlab import recipes
from kdlab.config import ModelConfig, RunConfig, Strict, apply_overrides, read_yaml, validate
from kdlab.errors import ConfigError, did_you_mean

VANILLA = "vanilla"
TEACHER = "teacher"


class PairSpec(Strict):
    name: str | None = None
    teacher: ModelConfig
    student: ModelConfig
    taps: dict[str, dict[str, Any]] = Field(default_factory=dict)
    reference: dict[str, float] = Field(
        default_factory=dict, description="published top-1 by method (teacher, student, kd...)"
    )

    @property
    def label(self) -> str:
        return self.name or f"{self.teacher.name}-{self.student.name}"


class ProtocolSpec(Strict):
    name: str
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    epochs: int | None = Field(None, ge=1)
    teacher_epochs: int | None = Field(None, ge=1)
    teacher_train: dict[str, Any] = Field(
        default_factory=dict, description="train section overrides for teachers"
    )
    seeds: list[int] = Field(default_factory=lambda: [0])
    pairs: list[PairSpec] = Field(min_length=1)
    methods: dict[str, str | dict[str, Any]] = Field(default_factory=dict)
    recipes: str | None = None
    exclude: list[str] = Field(
        default_factory=list, description="recipe names in 'recipes' to leave out"
    )
    reference_note: str = ""


@dataclass
class Protocol:
    """A validated protocol and where it was read from."""

    spec: ProtocolSpec
    path: Path
    methods: dict[str, dict[str, Any]]  # name -> distill section

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class RunSpec:
    """One cell of the matrix: a run config and where it lives."""

    kind: str  # "teacher", "vanilla" or "method"
    pair: str
    method: str
    seed: int
    cfg: RunConfig
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.pair}/{self.method}/seed{self.seed}"


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


def _find(rel: str, base: Path) -> Path:
    p = Path(rel)
    for cand in [p] if p.is_absolute() else [base / p, p]:
        if cand.exists():
            return cand
    shipped = recipes.resolve(rel)  # configs/... names the recipes shipped with kdlab
    if shipped is not None:
        return shipped
    raise ConfigError(
        f"protocol path {rel!r} not found (looked next to the protocol in {str(base)!r}, "
        "in the current folder and in kdlab's recipes)"
    )


def _find_optional(rel: str, base: Path) -> Path | None:
    try:
        return _find(rel, base)
    except ConfigError:
        return None


def _distill_from_recipe(path: Path) -> dict[str, Any]:
    data = read_yaml(path)
    distill = data.get("distill")
    if not isinstance(distill, dict) or not distill.get("terms"):
        raise ConfigError(f"recipe {str(path)!r} has no 'distill.terms' to benchmark")
    return distill


def load_protocol(
    name_or_path: str | Path, methods: list[str] | None = None, seeds: list[int] | None = None
) -> Protocol:
    """Read and validate a protocol; ``methods`` / ``seeds`` restrict or replace its own."""
    path = protocol_path(name_or_path)
    spec = validate(ProtocolSpec, read_yaml(path), where=f"protocol {path.name}")
    base_dir = path.parent
    found: dict[str, dict[str, Any]] = {}
    folder = _find_optional(spec.recipes, base_dir) if spec.recipes else None
    if spec.recipes and folder is None:
        warnings.warn(
            f"protocol {spec.name!r}: recipe folder {spec.recipes!r} not found (run from the "
            "repository root to include its recipes); using the protocol's own methods",
            stacklevel=2,
        )
    if folder is not None:
        for recipe in sorted(folder.glob("*.yaml")):
            if recipe.name.startswith(("_", ".")) or recipe.stem in spec.exclude:
                continue  # private / scratch files, or left out by the protocol
            data = read_yaml(recipe)
            if data.get("teacher") and (data.get("distill") or {}).get("terms"):
                found[recipe.stem] = data["distill"]
    for name, entry in spec.methods.items():
        if name in (VANILLA, TEACHER):
            raise ConfigError(f"protocol {path.name}: method name {name!r} is reserved")
        if isinstance(entry, str):
            found[name] = _distill_from_recipe(_find(entry, base_dir))
        else:
            if not entry.get("terms"):
                raise ConfigError(f"protocol {path.name}: methods.{name} needs 'terms'")
            found[name] = copy.deepcopy(entry)
    if methods is not None:
        unknown = [m for m in methods if m not in found and m != VANILLA]
        if unknown:
            raise ConfigError(
                f"protocol {spec.name!r} has no method {unknown[0]!r}; "
                f"{did_you_mean(unknown[0], found)}"
            )
        found = {m: found[m] for m in methods if m != VANILLA}
    if seeds is not None:
        if not seeds:
            raise ConfigError("--seeds needs at least one seed")
        spec.seeds = list(seeds)
    labels = [p.label for p in spec.pairs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"protocol {spec.name!r}: pair names must be unique, got {labels}")
    return Protocol(spec=spec, path=path, methods=found)


# ---------------------------------------------------------------- expansion


def config_hash(cfg: RunConfig) -> str:
    """A hash of what determines a run's result (not its name, folder or display)."""
    data = cfg.model_dump(mode="json")
    data.pop("name", None)
    data.pop("output_dir", None)
    data["train"].pop("progress", None)
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _apply_taps(terms: list[dict[str, Any]], taps: dict[str, dict[str, Any]]) -> None:
    for term in terms:
        for key in (term.get("name"), term.get("method")):
            if key is not None and key in taps:
                term.update(copy.deepcopy(taps[key]))
                break


def _run_config(
    base: dict[str, Any], name: str, seed: int, student: ModelConfig, **extra: Any
) -> RunConfig:
    data = copy.deepcopy(base)
    data.update(name=name, seed=seed, student=student.model_dump(mode="json"), **extra)
    return validate(RunConfig, data, where=f"run {name}")


def expand(proto: Protocol, out: Path, overrides: list[str] | None = None) -> list[RunSpec]:
    """Every run of the matrix in order: per seed, teachers, then vanilla, then methods.

    Teachers live in ``out/teachers/<model>-seed<k>-<hash>`` (the hash of their resolved
    config), so a change to anything that matters trains a new one.
    """
    spec = proto.spec
    base = copy.deepcopy(spec.base)
    base.setdefault("train", {})
    if overrides:  # dotted key=value on the base recipe, e.g. data.root=/data/cifar
        base = apply_overrides(base, overrides)
    student_train = dict(base["train"])
    if spec.epochs is not None:
        student_train["epochs"] = spec.epochs
    teacher_train = _merge(dict(base["train"]), spec.teacher_train)
    if spec.teacher_epochs is not None:
        teacher_train["epochs"] = spec.teacher_epochs
    elif spec.epochs is not None:
        teacher_train.setdefault("epochs", spec.epochs)
    runs: list[RunSpec] = []
    for seed in spec.seeds:
        for pair in spec.pairs:
            teacher_model = pair.teacher
            if teacher_model.checkpoint is None:
                tcfg = _run_config(
                    {**base, "train": teacher_train},
                    f"{pair.label}-teacher-seed{seed}",
                    seed,
                    ModelConfig(name=pair.teacher.name, kwargs=pair.teacher.kwargs),
                    distill={"terms": [{"method": "ce"}]},
                )
                tdir = out / "teachers" / f"{pair.teacher.name}-seed{seed}-{config_hash(tcfg)}"
                runs.append(RunSpec(TEACHER, pair.label, TEACHER, seed, tcfg, tdir))
                teacher_model = ModelConfig(
                    name=pair.teacher.name, kwargs=pair.teacher.kwargs, checkpoint=str(tdir)
                )
            vcfg = _run_config(
                {**base, "train": student_train},
                f"{pair.label}-{VANILLA}-seed{seed}",
                seed,
                pair.student,
                distill={"terms": [{"method": "ce"}]},
            )
            runs.append(
                RunSpec(
                    VANILLA, pair.label, VANILLA, seed, vcfg, _run_dir(out, pair, VANILLA, seed)
                )
            )
            for method, distill in proto.methods.items():
                distill = copy.deepcopy(distill)
                _apply_taps(distill["terms"], pair.taps)
                mcfg = _run_config(
                    {**base, "train": student_train},
                    f"{pair.label}-{method}-seed{seed}",
                    seed,
                    pair.student,
                    teacher=teacher_model.model_dump(mode="json"),
                    distill=distill,
                )
                runs.append(
                    RunSpec(
                        "method", pair.label, method, seed, mcfg, _run_dir(out, pair, method, seed)
                    )
                )
    return runs


def _run_dir(out: Path, pair: PairSpec, method: str, seed: int) -> Path:
    return out / "runs" / pair.label / method / f"seed{seed}"


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of mappings; ``b`` wins."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
