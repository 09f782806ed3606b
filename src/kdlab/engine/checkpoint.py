"""Checkpoints that survive a kill at any moment and never run code on load.

A checkpoint is a folder ``step-<global iteration>/`` holding ``model.safetensors``
(weights), ``state.pt`` (optimizer, scheduler, engine counters; plain tensors and
containers only, loaded with ``weights_only=True``) and, written last, ``meta.json``
with both files' SHA-256. Every file is written to a temporary name, flushed, fsynced
and renamed, so a folder either has a ``meta.json`` matching its files or is
ignored. The newest valid folders are kept; a corrupted newest one falls back to the
one before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from kdlab.errors import CheckpointError

KEEP = 2


def _file_mode() -> int:
    # mkstemp creates 0600 files; run artifacts get the mode open() would give them.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, rename it over
    ``path``: readers see the old file or the new one, never half of either."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, _file_mode())
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _tensor_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # safetensors refuses shared storage and non-contiguous tensors: store copies.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_weights(
    path: Path, state: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Atomically save a state dict as safetensors."""
    tensors = _tensor_dict(state)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_weights(path: Path) -> dict[str, Tensor]:
    """Load a safetensors file; a missing or unreadable file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types by version
        raise CheckpointError(
            f"weights file {str(path)!r} is not a readable safetensors file ({err})"
        ) from None


def load_state(path: Path) -> dict[str, Any]:
    """Load a non-weight state file with ``weights_only=True``: no code ever runs."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"state file {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise CheckpointError(
            f"state file {str(path)!r} cannot be loaded safely ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); kdlab only loads plain "
            "tensors and containers"
        ) from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(
    folder: Path, step: int, weights: dict[str, Tensor], state: dict[str, Any]
) -> Path:
    """Write ``folder/step-<step>/`` atomically and prune all but the newest KEEP."""
    folder = Path(folder)
    target = folder / f"step-{step:09d}"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    save_weights(target / "model.safetensors", weights)
    atomic_write(target / "state.pt", lambda tmp: torch.save(state, tmp))
    meta = {
        "step": step,
        "model.safetensors": _sha256(target / "model.safetensors"),
        "state.pt": _sha256(target / "state.pt"),
    }
    atomic_write_text(target / "meta.json", json.dumps(meta))
    for old in list_checkpoints(folder)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint folders with a meta.json, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / "meta.json").is_file())


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError unless both files match the hashes in meta.json."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r}: meta.json unreadable ({err})") from None
    for name in ("model.safetensors", "state.pt"):
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r}: {name} is missing")
        if _sha256(f) != meta.get(name):
            raise CheckpointError(
                f"checkpoint {str(path)!r}: {name} is corrupted (its hash does not match)"
            )


def load_latest_checkpoint(
    folder: Path, warn: Any = print
) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """The newest checkpoint that verifies and loads; older ones are the fallback."""
    errors = []
    for path in reversed(list_checkpoints(folder)):
        try:
            verify_checkpoint(path)
            return load_weights(path / "model.safetensors"), load_state(path / "state.pt")
        except CheckpointError as err:
            errors.append(str(err))
            warn(f"kdlab: skipping bad checkpoint: {err}")
    if errors:
        raise CheckpointError("no usable checkpoint: " + "; ".join(errors))
    return None
