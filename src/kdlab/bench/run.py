"""Running a protocol's matrix: validated first, resumable, every run trained once.

This module is bench's one door to the engine: every call to ``train()``, every model
load and every read of a run folder happens here.
"""

from __future__ import annotations

import dataclasses
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from kdlab.bench.hooks import DATA_HOOKS, PRE_STEPS, HookContext, bind_hook
from kdlab.bench.matrix import RunSpec, expand
from kdlab.bench.protocol import METHOD, Protocol
from kdlab.config import RunConfig
from kdlab.data import DataBundle, build_dataset
from kdlab.engine import evaluate, load_model, train
from kdlab.engine.handlers import ReportProgress
from kdlab.rundir import RunDir

BENCH_INFO = ".bench.json"  # beside a run folder: the cell, its hooks, pre-step facts


@dataclass
class RunRecord:
    """A finished run of the matrix: its spec, results.json and per-epoch metrics."""

    spec: RunSpec
    results: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    trained_now: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # pre-step facts (pseudo-labels...)


def is_done(run_dir: Path) -> bool:
    """A run is finished once the engine wrote its results (the last file it writes)."""
    return RunDir(run_dir).is_done()


def bench_info_path(run_dir: Path) -> Path:
    """What bench knows of a run and its config does not say (hooks, pre-step facts),
    kept beside the run folder, which belongs to the engine."""
    return run_dir.with_name(run_dir.name + BENCH_INFO)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_record(spec: RunSpec, trained_now: bool = False) -> RunRecord:
    rd = RunDir(spec.run_dir)
    info = _read_json(bench_info_path(spec.run_dir)).get("pre_step", {})
    return RunRecord(spec, rd.read_results(), rd.read_metrics(), trained_now, info)


# ---------------------------------------------------------------- data


class Bundles:
    """Datasets built once per data config; each run's hooks applied on top."""

    def __init__(self) -> None:
        self._built: dict[str, DataBundle] = {}

    def base(self, cfg: RunConfig) -> DataBundle:
        key = json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)
        if key not in self._built:
            self._built[key] = build_dataset(cfg.data)
        return self._built[key]

    def for_run(self, spec: RunSpec, cfg: RunConfig | None = None) -> DataBundle:
        """The run's data: its dataset through its data hooks, in order."""
        cfg = cfg or spec.cfg
        bundle = self.base(cfg)
        ctx = _context(spec, cfg)
        for i, hook in enumerate(spec.data):
            bundle = bind_hook(DATA_HOOKS, hook, f"data.{i}")(bundle, ctx)
        return bundle


def _context(spec: RunSpec, cfg: RunConfig) -> HookContext:
    teacher = spec.teacher
    return HookContext(
        seed=spec.seed,
        cfg=cfg,
        kind=spec.kind,
        teacher_cfg=teacher.cfg if teacher is not None else None,
        load_teacher=_teacher_loader(teacher) if teacher is not None else None,
    )


def _teacher_loader(teacher: RunSpec) -> Callable[[DataBundle], nn.Module]:
    def load(bundle: DataBundle) -> nn.Module:
        model = teacher.cfg.student
        return load_model(
            model.name, model.kwargs, str(teacher.run_dir), bundle.num_classes, bundle.in_channels
        )

    return load


def prepare(spec: RunSpec, bundles: Bundles) -> tuple[RunConfig, DataBundle, dict[str, Any]]:
    """The run's final recipe and data: data hooks, then pre-steps (teacher trained)."""
    cfg, bundle = spec.cfg, bundles.for_run(spec)
    for i, step in enumerate(spec.pre):
        bundle, cfg = bind_hook(PRE_STEPS, step, f"pre.{i}")(bundle, _context(spec, cfg))
    info = bundle.extra.get("pre_step", {})
    return cfg, bundle, dict(info) if isinstance(info, dict) else {}


# ---------------------------------------------------------------- running


def checked_matrix(
    proto: Protocol, out: Path, overrides: list[str] | None = None
) -> tuple[list[RunSpec], Bundles]:
    """The matrix's runs, every distinct cell built once to check it (nothing trains)."""
    from kdlab.bench.check import check_matrix  # noqa: PLC0415 - imports the methods

    runs, bundles = expand(proto, out, overrides), Bundles()
    check_matrix(proto, runs, bundles)
    return runs, bundles


def run_matrix(
    proto: Protocol,
    out: str | Path,
    overrides: list[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    keep_going: bool = True,
    failures: list[tuple[RunSpec, str]] | None = None,
) -> list[RunRecord]:
    """Validate every cell, then train every unfinished run of the matrix in ``out``.

    Every cell is resolved and built (recipe, terms, views, stages, taps, hooks) before
    the first run trains; a bad cell stops it there with one line per cell. A run whose
    folder holds ``results.json`` is read, not retrained; a folder without it (a killed
    run) is resumed from its last good checkpoint. With ``keep_going`` a run that raises
    is logged to its ``error.txt``, appended to ``failures`` and skipped (runs that need
    its teacher are skipped too); the next invocation tries it again.
    """
    failures = failures if failures is not None else []
    out = Path(out)
    runs, bundles = checked_matrix(proto, out, overrides)
    out.mkdir(parents=True, exist_ok=True)
    (out / "protocol.json").write_text(
        json.dumps(
            {
                "protocol": proto.spec.model_dump(mode="json"),
                "source": str(proto.path),
                "arms": {
                    pair: {name: dataclasses.asdict(arm) for name, arm in arms.items()}
                    for pair, arms in proto.arms.items()
                },
                "overrides": list(overrides or []),
            },
            indent=2,
        )
    )
    records: list[RunRecord] = []
    finished: dict[Path, RunRecord] = {}
    failed: dict[Path, str] = {}
    unique = {r.run_dir for r in runs}
    bar = tqdm(
        total=len(unique),
        initial=sum(is_done(d) for d in unique),
        desc=f"bench {proto.name}",
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for spec in runs:
            if spec.run_dir in finished:  # the same run twice (a teacher as baseline)
                records.append(dataclasses.replace(finished[spec.run_dir], spec=spec))
                continue
            if spec.run_dir in failed:
                failures.append((spec, failed[spec.run_dir]))
                continue
            if spec.teacher is not None and spec.teacher.run_dir in failed:
                failures.append((spec, f"not run: its teacher {spec.teacher.label} failed"))
                continue
            if is_done(spec.run_dir):
                finished[spec.run_dir] = read_record(spec)
                records.append(finished[spec.run_dir])
                continue
            bar.set_description(f"bench {proto.name}: {spec.label}")
            try:
                record = _train_run(spec, bundles, bar, log)
            except Exception as err:  # one broken run must not end a long benchmark
                if not keep_going:
                    raise
                message = f"{type(err).__name__}: {err}"
                RunDir(spec.run_dir).write_error(traceback.format_exc())
                failed[spec.run_dir] = message
                failures.append((spec, message))
                tqdm.write(f"kdlab bench: {spec.label} failed ({message.splitlines()[0]})")
                bar.update(1)
                continue
            finished[spec.run_dir] = record
            records.append(record)
            bar.update(1)
    finally:
        bar.close()
    records += teacher_on_student_data(runs, finished, bundles)
    return records


def _train_run(
    spec: RunSpec, bundles: Bundles, bar: Any, log: Callable[[str], None] | None
) -> RunRecord:
    cfg, bundle, info = prepare(spec, bundles)
    last = [0.0]

    def on_step(stage: str, it: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] > 0.5 or it == total:
            last[0] = now
            bar.set_postfix_str(f"{stage} {it}/{total}", refresh=True)

    rd = RunDir(spec.run_dir)
    # The folder is named by the run's cache key: what it holds is this very run, killed
    # before its results (resumed from its last checkpoint, or restarted without one).
    resume = rd.holds_run()
    if log is not None:
        log(f"{'resuming' if resume else 'training'} {spec.label} in {spec.run_dir}")
    train(cfg, rd, resume=resume, bundle=bundle, handlers=[ReportProgress(on_step)])
    rd.clear_error()
    bench_info = {
        "cell": spec.label,
        "key": spec.key,
        "data": spec.data,
        "pre": spec.pre,
        "pre_step": info,
    }
    bench_info_path(spec.run_dir).write_text(json.dumps(bench_info, indent=2))
    return read_record(spec, trained_now=True)


def teacher_on_student_data(
    runs: list[RunSpec], finished: dict[Path, RunRecord], bundles: Bundles
) -> list[RunRecord]:
    """The teacher tested on its students' test split, where their data hooks changed it
    (the clean teacher on degraded inputs, say): one extra teacher row per condition."""
    out: list[RunRecord] = []
    seen: set[tuple[str, str, Path]] = set()
    for spec in runs:
        teacher = spec.teacher
        if spec.kind != METHOD or teacher is None or teacher.run_dir not in finished:
            continue
        if (spec.pair, spec.condition, teacher.run_dir) in seen:
            continue
        seen.add((spec.pair, spec.condition, teacher.run_dir))
        theirs, own = bundles.for_run(spec), bundles.for_run(teacher)
        if theirs.test is own.test:
            continue
        model = _teacher_loader(teacher)(theirs)
        acc = evaluate(model, theirs.test, batch_size=spec.cfg.data.eval_batch_size)["acc1"]
        record = finished[teacher.run_dir]
        results = {**record.results, "select": "acc1", "test_acc_best": acc, "test_acc_last": acc}
        results.update(test_score_best=acc, test_score_last=acc)
        view = dataclasses.replace(record.spec, condition=spec.condition)
        out.append(RunRecord(view, results, [], False, {"tested_on": "students' test split"}))
    return out
