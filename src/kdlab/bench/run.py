"""Running a protocol's matrix: resumable, teachers cached, one progress bar."""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from kdlab.bench.protocol import Protocol, RunSpec, config_hash, expand
from kdlab.data import DataBundle, build_dataset
from kdlab.engine import train
from kdlab.engine.handlers import ReportProgress
from kdlab.errors import ConfigError
from kdlab.rundir import RunDir


@dataclass
class RunRecord:
    """A finished run of the matrix: its spec, results.json and per-epoch metrics."""

    spec: RunSpec
    results: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    trained_now: bool = False


def is_done(run_dir: Path) -> bool:
    """A run is finished once the engine wrote its results.json (the last file it writes)."""
    return RunDir(run_dir).is_done()


def read_record(spec: RunSpec, trained_now: bool = False) -> RunRecord:
    rd = RunDir(spec.run_dir)
    return RunRecord(
        spec=spec, results=rd.read_results(), metrics=rd.read_metrics(), trained_now=trained_now
    )


def check_same_config(spec: RunSpec) -> None:
    """A run folder may only be reused (read or resumed) for the very same config."""
    rd = RunDir(spec.run_dir)
    if not rd.has_config():
        return
    old = rd.read_config()
    if config_hash(old) == config_hash(spec.cfg):
        return
    a, b = _flat(old.model_dump(mode="json")), _flat(spec.cfg.model_dump(mode="json"))
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in _IGNORED]
    shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:4])
    raise ConfigError(
        f"{str(spec.run_dir)!r} holds a run of another config ({shown}); the protocol or "
        "a recipe changed since: use another --out, or delete that folder to retrain it"
    )


_IGNORED = {"name", "output_dir", "train.progress"}


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _data_key(spec: RunSpec) -> str:
    return json.dumps(spec.cfg.data.model_dump(mode="json"), sort_keys=True)


def run_matrix(
    proto: Protocol,
    out: str | Path,
    overrides: list[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    keep_going: bool = True,
    failures: list[tuple[RunSpec, str]] | None = None,
) -> list[RunRecord]:
    """Train every unfinished run of the matrix in ``out`` and return all records.

    A run whose folder holds ``results.json`` is read, not retrained; a run folder
    without it (a killed run) is resumed from its last good checkpoint. With
    ``keep_going`` a run that raises is logged to its ``error.txt``, appended to
    ``failures`` and skipped (runs that need its teacher fail too); the next invocation
    tries it again.
    """
    failures = failures if failures is not None else []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = expand(proto, out, overrides)
    (out / "protocol.json").write_text(
        json.dumps(
            {
                "protocol": proto.spec.model_dump(mode="json"),
                "source": str(proto.path),
                "methods": proto.methods,
                "overrides": list(overrides or []),
            },
            indent=2,
        )
    )
    bundles: dict[str, DataBundle] = {}
    records: list[RunRecord] = []
    done = sum(is_done(r.run_dir) for r in runs)
    bar = tqdm(
        total=len(runs),
        initial=done,
        desc=f"bench {proto.name}",
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for spec in runs:
            check_same_config(spec)
            if is_done(spec.run_dir):
                records.append(read_record(spec))
                continue
            bar.set_description(f"bench {proto.name}: {spec.label}")
            key = _data_key(spec)
            if key not in bundles:
                bundles[key] = build_dataset(spec.cfg.data)
            last = [0.0]

            def on_step(stage: str, it: int, total: int, _last: list[float] = last) -> None:
                now = time.monotonic()
                if now - _last[0] > 0.5 or it == total:
                    _last[0] = now
                    bar.set_postfix_str(f"{stage} {it}/{total}", refresh=True)

            resume = spec.run_dir.exists()
            if log is not None:
                log(f"{'resuming' if resume else 'training'} {spec.label} in {spec.run_dir}")
            try:
                train(
                    spec.cfg,
                    run_dir=spec.run_dir,
                    resume=resume,
                    bundle=bundles[key],
                    handlers=[ReportProgress(on_step)],
                )
            except Exception as err:  # one broken run must not end a long benchmark
                if not keep_going:
                    raise
                message = f"{type(err).__name__}: {err}"
                RunDir(spec.run_dir).write_error(traceback.format_exc())
                failures.append((spec, message))
                tqdm.write(f"kdlab bench: {spec.label} failed ({message.splitlines()[0]})")
                bar.update(1)
                continue
            RunDir(spec.run_dir).clear_error()
            records.append(read_record(spec, trained_now=True))
            bar.update(1)
    finally:
        bar.close()
    return records
