"""The run folder: the one class that knows its layout.

Every module that reads or writes a run (the engine, bench, tune, eval, pipelines,
studies) goes through :class:`RunDir`; no other module names these files::

    config.yaml          the resolved recipe (provenance)
    fingerprint.json     hash of what defines the run (the recipe minus VOLATILE keys)
    env.json             versions, device, CPU, world size
    metrics.jsonl        one row per (stage, epoch), appended as epochs end
    results.json         written last: the run is done once it exists
    checkpoints/         step-<n>/ folders (see kdlab.engine.checkpoint)
    best.safetensors     student weights of the best epoch on validation
    last.safetensors     student weights of the last epoch
    model.safetensors    the selected student (best, or last without validation)
    logs/                train.loggers' output: tensorboard/ event files, mlruns/ (MLflow)
    run.lock             held by the process that trains in the folder
    error.txt            why the last attempt failed (written by drivers such as bench)

A run's lifetime (:meth:`RunDir.session`): take the lock, check that a fresh run does
not overwrite a run (unless ``overwrite``), that a resume finds a run (a folder with a
run's config but no checkpoint yet is a run killed early: it starts afresh) and keeps
its fingerprint (naming the keys that changed), and write nothing until the checks
pass. A write that fails mid-run (a full disk, a folder turned read-only) is a
:class:`~kdlab.errors.RunFolderError` naming the folder and the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from kdlab.errors import CheckpointError, RunFolderError

if TYPE_CHECKING:
    from kdlab.config import RunConfig

# Keys that may change when a run is resumed: they name, place or display the run, or
# say how long it trains, but do not change what one step computes.
VOLATILE = (
    "name",
    "output_dir",
    "train.epochs",
    "train.progress",
    "train.threads",
    "train.device",
    "train.checkpoint_every",
    "train.log_every",
    "train.loggers",
)

WEIGHTS = {"model": "model.safetensors", "best": "best.safetensors", "last": "last.safetensors"}


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    if not isinstance(d, dict) or (prefix and not d):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def defining_keys(cfg: RunConfig) -> dict[str, Any]:
    """The flattened recipe minus :data:`VOLATILE`: what the fingerprint hashes."""
    flat = flatten(cfg.model_dump(mode="json"))
    return {k: v for k, v in sorted(flat.items()) if k not in VOLATILE}


def fingerprint(cfg: RunConfig) -> str:
    """SHA-256 (16 hex digits) of :func:`defining_keys`."""
    blob = json.dumps(defining_keys(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Flattened keys whose values differ between two :func:`defining_keys` dicts."""
    return [
        k for k in sorted(set(old) | set(new)) if old.get(k, "<unset>") != new.get(k, "<unset>")
    ]


_HELD: set[Path] = set()  # the run.lock files this process holds now


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _interrupt_behind(err: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C an OSError was raised while handling, if any: an interrupted cleanup
    (``shutil.rmtree`` closing its directory fd on the way out) can fail with EBADF,
    and the user pressed Ctrl-C; that is an interrupt, not a failed write."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__context__
    return None


def weights_source(source: str | Path, key: str = "checkpoint") -> Path:
    """The safetensors file a model's ``checkpoint:`` (named ``key`` in errors) points
    at: a file, or a finished run's folder (its ``model.safetensors``). A training
    checkpoint, an unfinished run or another folder is refused with what to give."""
    path = Path(source)
    if not path.is_dir():
        step = path.parent if path.name == "model.safetensors" else None
        if step is None or not _is_checkpoint(step):
            return path  # a file (loading names a missing or unreadable one)
        path = step
    if _is_checkpoint(path) or (path.name == RunDir.CHECKPOINTS and _is_checkpoint_parent(path)):
        run = RunDir(path.parent.parent if _is_checkpoint(path) else path.parent)
        raise CheckpointError(
            f"{key} {str(source)!r} is a training checkpoint (the student and the terms' "
            f"adapters, for resuming run {str(run)!r}), not a model's weights; give "
            + run._weights_hint(key)
        )
    run = RunDir(path)
    selected = run.weights_path("model")
    if selected.is_file():
        return selected
    if run.has_config() or run.holds_run():
        raise CheckpointError(
            f"{key} {str(path)!r} is a run that has not finished (no {selected.name}); "
            + run._weights_hint(key)
        )
    raise CheckpointError(
        f"{key} {str(path)!r} is a folder without {selected.name} and not a run folder (no "
        f"{RunDir.CONFIG}); give a .safetensors file or a finished run's folder"
    )


def _is_checkpoint(path: Path) -> bool:
    from kdlab.engine.checkpoint import META  # noqa: PLC0415

    return path.name.startswith("step-") and (path / META).is_file()


def _is_checkpoint_parent(path: Path) -> bool:
    return any(_is_checkpoint(p) for p in path.glob("step-*"))


class RunDir:
    """A run folder. Reading is safe anywhere; writing is for the training process
    (rank 0 of a distributed run)."""

    CONFIG = "config.yaml"
    FINGERPRINT = "fingerprint.json"
    ENV = "env.json"
    METRICS = "metrics.jsonl"
    RESULTS = "results.json"
    CHECKPOINTS = "checkpoints"
    LOCK = "run.lock"
    ERROR = "error.txt"
    LOGS = "logs"
    # what a run writes; clear() removes these, holds_run() looks for them
    ARTIFACTS = (CONFIG, FINGERPRINT, ENV, METRICS, RESULTS, CHECKPOINTS, LOGS, *WEIGHTS.values())

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls, cfg: RunConfig) -> RunDir:
        """The recipe's default folder, ``output_dir/name``."""
        return cls(Path(cfg.output_dir) / cfg.name)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    # ------------------------------------------------------------------ state
    def exists(self) -> bool:
        return self.path.is_dir()

    def holds_run(self) -> bool:
        """True when an earlier run left anything of its own here."""
        return any((self.path / name).exists() for name in self.ARTIFACTS)

    def has_config(self) -> bool:
        return (self.path / self.CONFIG).is_file()

    def is_done(self) -> bool:
        """A run is finished once its results.json (the last file written) exists."""
        return (self.path / self.RESULTS).is_file()

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def logs(self) -> Path:
        """Where experiment loggers write (``train.loggers``)."""
        return self.path / self.LOGS

    def weights_path(self, which: str = "model") -> Path:
        """``model`` (selected), ``best`` or ``last`` student weights."""
        if which not in WEIGHTS:
            raise RunFolderError(
                f"no weights {which!r} in a run folder; use one of {list(WEIGHTS)}"
            )
        return self.path / WEIGHTS[which]

    def _weights_hint(self, key: str) -> str:
        """What to give as ``key`` instead of this (unfinished) run's checkpoints."""
        finish = (
            f"finish it with `kdlab train {self.path / self.CONFIG} --run-dir {self.path} --resume`"
        )
        if self.weights_path("model").is_file():
            return f"the run folder itself ({key}={self.path})"
        best = self.weights_path("best")
        if best.is_file():
            return f"its best epoch so far ({key}={best}), or {finish} and give its folder"
        return f"{finish} and give its folder (no epoch has finished: no {best.name} yet)"

    # ------------------------------------------------------------------ reading
    def read_config(self) -> RunConfig:
        from kdlab.config import load_recipe  # noqa: PLC0415 - config imports the registries

        if not self.has_config():
            raise RunFolderError(f"{str(self.path)!r} is not a run folder (no {self.CONFIG})")
        return load_recipe(self.path / self.CONFIG)

    def read_results(self) -> dict[str, Any]:
        return self._read_json(self.RESULTS)

    def read_env(self) -> dict[str, Any]:
        return self._read_json(self.ENV)

    def read_fingerprint(self) -> dict[str, Any] | None:
        """``{"sha256": ..., "keys": {...}}`` or None (a folder from before fingerprints)."""
        if not (self.path / self.FINGERPRINT).is_file():
            return None
        return self._read_json(self.FINGERPRINT)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every metrics row; a last line cut by a kill is skipped."""
        path = self.path / self.METRICS
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows

    def read_error(self) -> str | None:
        path = self.path / self.ERROR
        return path.read_text() if path.is_file() else None

    def load_weights(self, which: str = "model") -> dict[str, Tensor]:
        from kdlab.engine.checkpoint import load_weights  # noqa: PLC0415

        return load_weights(self.weights_path(which))

    def latest_checkpoint(self) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        """The newest checkpoint that verifies, or None; bad ones are skipped with a warning."""
        from kdlab.engine.checkpoint import load_latest_checkpoint  # noqa: PLC0415

        return load_latest_checkpoint(self.checkpoints)

    def _read_json(self, name: str) -> dict[str, Any]:
        path = self.path / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise RunFolderError(f"{str(self.path)!r} has no {name}") from None
        except (OSError, ValueError) as err:
            raise RunFolderError(f"{str(path)!r} cannot be read ({err})") from None

    # ------------------------------------------------------------------ writing
    def create(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a file in the way, no permission: the user's path
            raise RunFolderError(
                f"run folder {str(self.path)!r} cannot be created: {err}"
            ) from None

    def write_config(self, cfg: RunConfig) -> None:
        """``config.yaml`` and its ``fingerprint.json``."""
        from kdlab.config import dump_config  # noqa: PLC0415

        self._write_text(self.CONFIG, dump_config(cfg))
        keys = defining_keys(cfg)
        self._write_json(self.FINGERPRINT, {"sha256": fingerprint(cfg), "keys": keys})

    def write_env(self, env: dict[str, Any]) -> None:
        self._write_json(self.ENV, env)

    def append_metrics(self, row: dict[str, Any]) -> None:
        with self._writing(self.METRICS), open(self.path / self.METRICS, "a") as f:
            f.write(json.dumps(row) + "\n")

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        self._write_text(self.METRICS, "".join(json.dumps(r) + "\n" for r in rows))

    def write_results(self, results: dict[str, Any]) -> None:
        self._write_json(self.RESULTS, results)

    def write_error(self, text: str) -> None:
        self.create()
        self._write_text(self.ERROR, text)

    def clear_error(self) -> None:
        (self.path / self.ERROR).unlink(missing_ok=True)

    def save_weights(self, which: str, state: dict[str, Tensor]) -> None:
        from kdlab.engine.checkpoint import save_weights  # noqa: PLC0415

        path = self.weights_path(which)
        with self._writing(path.name):
            save_weights(path, state)

    def save_checkpoint(self, step: int, weights: dict[str, Tensor], state: dict[str, Any]) -> Path:
        from kdlab.engine.checkpoint import save_checkpoint  # noqa: PLC0415

        with self._writing(f"checkpoint step {step}"):
            return save_checkpoint(self.checkpoints, step, weights, state)

    def clear(self) -> None:
        """Remove what an earlier run left, so a fresh run never mixes in its files."""
        for name in self.ARTIFACTS:
            path = self.path / name
            with self._writing(f"{name} (removing it)"):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)

    def _write_text(self, name: str, text: str) -> None:
        from kdlab.engine.checkpoint import atomic_write_text  # noqa: PLC0415

        with self._writing(name):
            atomic_write_text(self.path / name, text)

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """A failed write (a full disk, a read-only folder) becomes a RunFolderError that
        names the folder and the last good checkpoint (never touched by a failed write:
        a checkpoint is complete before the older ones are pruned)."""
        try:
            yield
        except OSError as err:
            from kdlab.engine.checkpoint import list_checkpoints  # noqa: PLC0415

            interrupt = _interrupt_behind(err)
            if interrupt is not None:
                raise interrupt from None
            reason = os.strerror(err.errno) if err.errno else str(err)
            kept = list_checkpoints(self.checkpoints)
            then = (
                f"the last good checkpoint ({kept[-1].name}) is intact: free space or make the "
                "folder writable, then continue with --resume"
                if kept
                else "no checkpoint was written yet: free space or make the folder writable "
                "and start it again"
            )
            raise RunFolderError(
                f"cannot write {what} in run folder {str(self.path)!r} ({reason}); {then}"
            ) from None

    def _write_json(self, name: str, data: dict[str, Any]) -> None:
        self._write_text(name, json.dumps(data, indent=2))

    # ------------------------------------------------------------------ lifetime
    def check_fresh(self, overwrite: bool) -> None:
        """A fresh run may not silently replace one: refuse unless ``overwrite``."""
        if overwrite or not self.holds_run():
            return
        what = "a finished run" if self.is_done() else "an unfinished run"
        raise RunFolderError(
            f"{str(self.path)!r} holds {what}; continue it with --resume (resume=True), "
            "replace it with --overwrite (overwrite=True), or choose another name/--run-dir"
        )

    def check_fingerprint(self, cfg: RunConfig) -> None:
        """A resume must train the same run: refuse a changed recipe, naming the keys.

        Keys in :data:`VOLATILE` (epochs, device, threads, display...) may change.
        """
        saved = self.read_fingerprint()
        if saved is None or saved.get("sha256") == fingerprint(cfg):
            return
        old, new = saved.get("keys", {}), defining_keys(cfg)
        diff = changed_keys(old, new)
        shown = ", ".join(
            f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in diff[:5]
        )
        more = f" and {len(diff) - 5} more" if len(diff) > 5 else ""
        raise RunFolderError(
            f"cannot resume {str(self.path)!r} with another recipe ({shown}{more}); only "
            f"{', '.join(VOLATILE)} may change on resume. Undo the change, or start a new run "
            "(another name, or --overwrite)"
        )

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``run.lock`` while training: a second process is refused. A lock left by
        a dead process on this host (a killed run) is reported and taken over."""
        self.create()
        path = self.path / self.LOCK
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._handle_existing_lock(path)
                continue
            except OSError as err:
                raise RunFolderError(f"cannot lock run folder {str(self.path)!r}: {err}") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            _HELD.add(path.resolve())
            break
        else:
            raise RunFolderError(
                f"cannot lock run folder {str(self.path)!r}: {path} keeps reappearing"
            )
        try:
            yield
        finally:
            _HELD.discard(path.resolve())
            with contextlib.suppress(OSError):  # a read-only folder keeps it: see below
                held = json.loads(path.read_text())
                if held.get("pid") == me["pid"] and held.get("host") == me["host"]:
                    path.unlink()

    def _handle_existing_lock(self, path: Path) -> None:
        try:
            held = json.loads(path.read_text())
            pid, host = int(held["pid"]), str(held["host"])
        except (OSError, ValueError, KeyError, TypeError):
            # unreadable: a writer killed between create and write; old enough to be stale
            if path.exists() and time.time() - path.stat().st_mtime < 10:
                raise RunFolderError(
                    f"run folder {str(self.path)!r} is being locked by another process"
                ) from None
            warnings.warn(f"kdlab: removing an unreadable lock {str(path)!r}", stacklevel=4)
            path.unlink(missing_ok=True)
            return
        here = host == socket.gethostname()
        if here and not _pid_alive(pid):
            warnings.warn(
                f"kdlab: {str(self.path)!r} was locked by pid {pid}, which is no longer "
                "running (a killed run); taking the lock over",
                stacklevel=4,
            )
            path.unlink(missing_ok=True)
            return
        if here and pid == os.getpid() and path.resolve() not in _HELD:
            # Left by an earlier run in this process that could not remove it (the
            # folder was read-only when that run ended).
            warnings.warn(
                f"kdlab: {str(self.path)!r} kept a lock of an earlier run in this process "
                f"(pid {pid}); taking it over",
                stacklevel=4,
            )
            path.unlink(missing_ok=True)
            return
        where = "this host" if host == socket.gethostname() else f"host {host!r}"
        raise RunFolderError(
            f"run folder {str(self.path)!r} is in use by pid {pid} on {where} ({path.name}); "
            f"wait for it to finish, or delete {str(path)!r} if that process is gone"
        )

    def check_resumable(self) -> None:
        """A resume needs a run to continue. A folder with a run's config but no
        checkpoint yet (killed before its first) is one: it starts afresh."""
        if self.holds_run():
            return
        raise RunFolderError(
            f"nothing to resume in {str(self.path)!r}: it holds no run (no {self.CONFIG}); "
            "start it without --resume (resume=False), or use --resume-or-start to resume "
            "only when there is a run"
        )

    def check_start(self, cfg: RunConfig, resume: bool, overwrite: bool = False) -> None:
        """Whether this folder may take ``cfg``: a resume must find a run with the same
        fingerprint; a fresh run may not replace a run unless ``overwrite``."""
        if resume:
            self.check_resumable()
            self.check_fingerprint(cfg)
        else:
            self.check_fresh(overwrite)

    @contextlib.contextmanager
    def session(self, cfg: RunConfig, resume: bool, overwrite: bool = False) -> Iterator[None]:
        """Lock the folder and :meth:`check_start`; nothing is written here (a resume of
        a folder holding no run does not even create it)."""
        if resume:
            self.check_resumable()
        with self.lock():
            self.check_start(cfg, resume, overwrite)
            yield
