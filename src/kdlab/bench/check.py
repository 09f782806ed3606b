"""Validate every cell of a matrix before the first run trains.

A misspelt method or term key, a bad view, stage or tap path, an unknown hook or hook
parameter: each is found here, in seconds, not after hours of teacher training. Each
distinct cell (seeds do not change what is built) is built as the engine would build
it: terms, views, student and teacher (untrained when the matrix trains it), the
Distiller with its shape probe (taps, adapters), and the stages.
"""

from __future__ import annotations

import json

from kdlab.bench.hooks import PRE_STEPS, bind_hook
from kdlab.bench.matrix import RunSpec, matrix_error, one_line
from kdlab.bench.protocol import Protocol
from kdlab.bench.run import Bundles
from kdlab.config import RunConfig
from kdlab.data import DataBundle
from kdlab.distiller import Distiller
from kdlab.engine import load_model
from kdlab.engine.stages import resolve_stages
from kdlab.errors import KdlabError
from kdlab.methods import build_terms
from kdlab.models import create_model
from kdlab.views import build_views


def probe(cfg: RunConfig, bundle: DataBundle, teacher_trained_by_bench: bool) -> None:
    """Build what a run of ``cfg`` builds, on two samples of ``bundle``; raise on error."""
    terms = build_terms(cfg.distill.terms)
    views = build_views(cfg.distill.views)
    nc, ch = bundle.num_classes, bundle.in_channels
    student = create_model(cfg.student.name, nc, ch, **cfg.student.kwargs)
    teacher = None
    if cfg.teacher is not None:
        t = cfg.teacher
        if teacher_trained_by_bench:  # not trained yet: its architecture is what matters
            teacher = create_model(t.name, nc, ch, **t.kwargs)
        else:
            teacher = load_model(t.name, t.kwargs, t.checkpoint, nc, ch)
    distiller = Distiller(student, teacher, terms, views, example_input=bundle.train.example(2))
    resolve_stages(cfg, distiller)


def _shape_key(spec: RunSpec) -> str:
    """What decides whether a cell builds: its recipe without seed, names and teacher
    weights (a teacher the matrix trains is built untrained), and its hooks."""
    data = spec.cfg.model_dump(mode="json")
    for key in ("name", "seed", "output_dir"):
        data.pop(key, None)
    if spec.teacher is not None and data.get("teacher"):
        data["teacher"]["checkpoint"] = "trained by the matrix"
    return json.dumps([data, spec.data, spec.pre], sort_keys=True)


def check_cell(spec: RunSpec, bundles: Bundles) -> None:
    for i, step in enumerate(spec.pre):
        bind_hook(PRE_STEPS, step, f"pre.{i}")
    bundle = bundles.for_run(spec)  # binds and runs the data hooks
    probe(spec.cfg, bundle, teacher_trained_by_bench=spec.teacher is not None)


def check_matrix(proto: Protocol, runs: list[RunSpec], bundles: Bundles) -> None:
    """Raise one ConfigError listing every cell that would fail, one line per reason."""
    failed: dict[str, str] = {}  # shape key -> why
    checked: set[str] = set()
    for spec in runs:
        key = _shape_key(spec)
        if key in checked:
            continue
        checked.add(key)
        try:
            check_cell(spec, bundles)
        except KdlabError as err:
            failed[key] = one_line(err)
    cells = [(r.label, failed[k]) for r in runs if (k := _shape_key(r)) in failed]
    if cells:
        raise matrix_error(proto.name, cells, len(runs))
