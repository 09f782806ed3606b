"""A protocol's matrix: every run (cell) with its recipe, hooks, teacher and folder.

:func:`expand` turns a loaded :class:`~kdlab.bench.protocol.Protocol` into its runs: per
seed and pair the teacher, then per condition the baseline and every arm. A cell's
folder is named by a readable label and its cache key (its validated recipe, its hooks
and its teacher's key), so a finished run is never trained twice and a changed protocol
trains only what changed. Every cell whose recipe does not validate is reported at once,
one line per reason.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlab.bench.protocol import (
    BASELINE,
    METHOD,
    TEACHER,
    Arm,
    ConditionSpec,
    PairSpec,
    Protocol,
    override_terms,
    rename_student_taps,
)
from kdlab.config import ModelConfig, RunConfig, apply_overrides, set_dotted, validate
from kdlab.errors import ConfigError, KdlabError

MAX_SHOWN = 12  # distinct reasons shown when cells fail


@dataclass
class RunSpec:
    """One cell of the matrix: a run config, its hooks and where it lives."""

    kind: str  # TEACHER, BASELINE or METHOD
    pair: str
    method: str
    seed: int
    cfg: RunConfig
    run_dir: Path
    condition: str = ""
    data: list[dict[str, Any]] = field(default_factory=list)  # data hook specs
    pre: list[dict[str, Any]] = field(default_factory=list)  # pre-step specs
    teacher: RunSpec | None = None  # the teacher run this one reads
    key: str = ""  # content hash: the cache key of its results

    @property
    def label(self) -> str:
        cond = f"{self.condition}/" if self.condition else ""
        return f"{self.pair}/{cond}{self.method}/seed{self.seed}"


def config_hash(cfg: RunConfig, **extra: Any) -> str:
    """A hash of what determines a run's result (not its name, folder or display)."""
    data = cfg.model_dump(mode="json")
    data.pop("name", None)
    data.pop("output_dir", None)
    data["train"].pop("progress", None)
    blob = json.dumps({"run": data, **extra} if extra else data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def cell_key(cfg: RunConfig, data: list[Any], pre: list[Any], teacher: RunSpec | None) -> str:
    """The cache key of a run: its config and hooks, and its teacher (which its terms or
    pre-steps read) by key, not by folder, so a moved benchmark folder keeps its runs."""
    if teacher is None:
        return config_hash(cfg, data=data, pre=pre)
    if cfg.teacher is not None:
        cfg = cfg.model_copy(deep=True)
        cfg.teacher.checkpoint = None
    return config_hash(cfg, data=data, pre=pre, teacher=teacher.key)


def _run_config(
    base: dict[str, Any],
    name: str,
    seed: int,
    student: ModelConfig,
    sets: dict[str, Any] | None = None,
    **extra: Any,
) -> RunConfig:
    data = copy.deepcopy(base)
    data.update(name=name, seed=seed, student=student.model_dump(mode="json"), **extra)
    for key, value in (sets or {}).items():  # a condition's dotted changes
        set_dotted(data, key, copy.deepcopy(value), what="condition key")
    return validate(RunConfig, data)


def _distill_for(arm: Arm, pair: PairSpec) -> dict[str, Any]:
    distill = copy.deepcopy(arm.distill)
    distill["terms"] = override_terms(distill["terms"], pair.taps)
    return rename_student_taps(distill, pair.student_taps)


def expand(proto: Protocol, out: Path, overrides: list[str] | None = None) -> list[RunSpec]:
    """Every run of the matrix in order: per seed and pair, the teacher, then per
    condition the baseline and the methods.

    Run folders are named by a readable label and the run's cache key (its config and
    hooks): ``out/teachers/<model>-seed<k>-<key>`` and
    ``out/runs/<pair>[/<condition>]/<arm>/seed<k>-<key>``; a change to anything that
    matters gives a new folder, and a finished run is never trained twice.
    """
    spec = proto.spec
    base = copy.deepcopy(spec.base)
    base.setdefault("train", {})
    teacher_base = {**copy.deepcopy(base), "train": _merge(base["train"], spec.teacher_train)}
    if spec.epochs is not None:
        base["train"]["epochs"] = spec.epochs
        teacher_base["train"].setdefault("epochs", spec.epochs)
    if spec.teacher_epochs is not None:
        teacher_base["train"]["epochs"] = spec.teacher_epochs
    if overrides:  # dotted key=value on every run's recipe, e.g. data.root=/data/cifar
        base = apply_overrides(base, overrides)
        teacher_base = apply_overrides(teacher_base, overrides)
    conditions = spec.conditions or {"": ConditionSpec()}
    runs: list[RunSpec] = []
    failed: list[tuple[str, str]] = []  # (cell, why): every bad cell, not only the first

    def add(label: str, make: Any, *args: Any) -> RunSpec | None:
        try:
            run = make(proto, out, *args)
        except KdlabError as err:
            failed.append((label, one_line(err)))
            return None
        runs.append(run)
        return run

    teachers: dict[tuple[str, int], RunSpec | None] = {}
    for seed in spec.seeds:
        for pair in spec.pairs:
            t_seed = seed if spec.teacher_seed is None else spec.teacher_seed
            tkey = (pair.label, t_seed)
            if tkey not in teachers and pair.teacher.checkpoint is None:
                label = f"{pair.label}/{TEACHER}/seed{t_seed}"
                teachers[tkey] = add(label, _teacher, pair, t_seed, teacher_base)
            teacher = teachers.get(tkey)
            if teacher is None and pair.teacher.checkpoint is None:
                continue  # its teacher's recipe is bad: reported
            for cond_key, cond in conditions.items():
                where = f"{pair.label}/{cond_key}/" if cond_key else f"{pair.label}/"
                cond_ = (cond_key, cond)
                label = f"{where}{proto.baseline_name}/seed{seed}"
                add(label, _baseline, pair, cond_, seed, teacher, base)
                for method, arm in proto.arms[pair.label].items():
                    label = f"{where}{method}/seed{seed}"
                    add(label, _method, pair, cond_, (method, arm), seed, teacher, base)
    if failed:
        raise matrix_error(proto.name, failed, len(failed) + len(runs))
    return runs


def one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def matrix_error(name: str, failed: list[tuple[str, str]], total: int) -> ConfigError:
    """One error for every cell that would fail: one line per distinct reason."""
    cells: dict[str, list[str]] = {}  # why -> the cells that fail so
    for label, why in failed:
        cells.setdefault(why, []).append(label)
    lines = []
    for why, labels in list(cells.items())[:MAX_SHOWN]:
        more = f" (and {len(labels) - 1} more cells)" if len(labels) > 1 else ""
        lines.append(f"  {labels[0]}{more}: {why}")
    if len(cells) > MAX_SHOWN:
        lines.append(f"  ... and {len(cells) - MAX_SHOWN} more reasons")
    return ConfigError(
        f"protocol {name!r}: {len(failed)} of {total} cells would fail, nothing was trained:\n"
        + "\n".join(lines)
    )


def _teacher(
    proto: Protocol, out: Path, pair: PairSpec, seed: int, base: dict[str, Any]
) -> RunSpec:
    model = ModelConfig(name=pair.teacher.name, kwargs=pair.teacher.kwargs)
    name = f"{pair.label}-teacher-seed{seed}"
    cfg = _run_config(base, name, seed, model, distill=proto.teacher_distill)
    key = cell_key(cfg, proto.spec.teacher_data, [], None)
    run_dir = out / "teachers" / f"{pair.teacher.name}-seed{seed}-{key}"
    return RunSpec(
        TEACHER, pair.label, TEACHER, seed, cfg, run_dir, data=proto.spec.teacher_data, key=key
    )


def _method(
    proto: Protocol,
    out: Path,
    pair: PairSpec,
    condition: tuple[str, ConditionSpec],
    arm: tuple[str, Arm],
    seed: int,
    teacher: RunSpec | None,
    base: dict[str, Any],
) -> RunSpec:
    (cond_key, cond), (method, spec) = condition, arm
    tmodel = pair.teacher
    if teacher is not None:
        tmodel = pair.teacher.model_copy(update={"checkpoint": str(teacher.run_dir)})
    name = "-".join(filter(None, [pair.label, cond_key, method, f"seed{seed}"]))
    cfg = _run_config(
        base,
        name,
        seed,
        pair.student,
        cond.set,
        teacher=tmodel.model_dump(mode="json") if spec.teacher else None,
        distill=_distill_for(spec, pair),
    )
    data = [*proto.spec.data, *cond.data]
    reads = teacher if spec.teacher or spec.pre else None  # its teacher, if any
    key = cell_key(cfg, data, spec.pre, reads)
    run_dir = _run_dir(out, pair.label, cond_key, method, seed, key)
    return RunSpec(
        METHOD, pair.label, method, seed, cfg, run_dir, cond_key, data, spec.pre, reads, key
    )


def _baseline(
    proto: Protocol,
    out: Path,
    pair: PairSpec,
    condition: tuple[str, ConditionSpec],
    seed: int,
    teacher: RunSpec | None,
    base: dict[str, Any],
) -> RunSpec:
    name = proto.baseline_name
    cond_key, cond = condition
    if proto.spec.baseline.teacher:  # the teacher's own run, read where it lies
        if teacher is None:
            raise ConfigError(
                f"protocol {proto.name!r}: 'baseline.teacher' needs a teacher trained by the "
                f"protocol, but pair {pair.label!r} names a checkpoint"
            )
        return RunSpec(
            BASELINE,
            pair.label,
            name,
            seed,
            teacher.cfg,
            teacher.run_dir,
            cond_key,
            teacher.data,
            [],
            None,
            teacher.key,
        )
    data_hooks = [*proto.spec.data, *cond.data]
    cfg = _run_config(
        base,
        "-".join(filter(None, [pair.label, cond_key, name.replace(" ", "_"), f"seed{seed}"])),
        seed,
        pair.student,
        cond.set,
        distill=_distill_for(proto.baseline[pair.label], pair),
    )
    key = cell_key(cfg, data_hooks, [], None)
    run_dir = _run_dir(out, pair.label, cond_key, name, seed, key)
    return RunSpec(
        BASELINE, pair.label, name, seed, cfg, run_dir, cond_key, data_hooks, [], None, key
    )


def _run_dir(out: Path, pair: str, cond: str, arm: str, seed: int, key: str) -> Path:
    parts = [pair, cond, arm.replace(" ", "_").replace("/", "_")]
    return out.joinpath("runs", *filter(None, parts), f"seed{seed}-{key}")


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of mappings; ``b`` wins."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
