"""Data-parallel training through ``ignite.distributed`` (DDP over gloo or NCCL).

A run is distributed when it starts under ``torchrun`` (or ``kdlab train --nproc N``,
which spawns the processes through :class:`ignite.distributed.Parallel`). Every rank
builds the same models from the same seed; DDP wraps the Distiller, whose module tree
holds the student and the terms' adapters but not the frozen teacher, so only trained
weights are synchronised. The training loader gives each rank its shard of the same
permutation, ``data.batch_size`` stays the *global* batch (each rank takes
``batch_size / world_size``), and evaluation is sharded and reduced over ranks by the
evaluators. Rank 0 alone writes the run folder (checkpoints, metrics, reports).

See ``docs/distributed.md`` for launching on one or several machines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from torch import Tensor, nn
from torch.multiprocessing.spawn import ProcessException

from kdlab import errors
from kdlab.errors import ConfigError, KdlabError


def rank() -> int:
    return idist.get_rank()


def world_size() -> int:
    return idist.get_world_size()


def is_main() -> bool:
    return idist.get_rank() == 0


def launched_by_torchrun() -> bool:
    """True inside a process started by ``torchrun`` (its env vars are set)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or (
        "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ
    )


def backend_for(device: str) -> str:
    """NCCL when the recipe trains on CUDA and CUDA exists, gloo otherwise (CPU)."""
    wants_cuda = device == "auto" or device.startswith("cuda")
    return "nccl" if wants_cuda and torch.cuda.is_available() else "gloo"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(
    fn: Callable[..., Any],
    *args: Any,
    nproc: int | None = None,
    device: str = "auto",
    master_port: int | None = None,
) -> None:
    """Run ``fn(local_rank, *args)`` on every rank.

    Under torchrun the process group comes from its environment; with ``nproc > 1``
    ``nproc`` local processes are spawned; otherwise ``fn`` runs here, undistributed.
    A spawned worker's :class:`~kdlab.errors.KdlabError` is raised here (the lowest
    rank's, one line; the other workers are stopped), and a KeyboardInterrupt here
    (SIGINT to this process alone) interrupts the workers before it propagates.
    """
    if launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        with idist.Parallel(backend=backend_for(device)) as parallel:
            parallel.run(fn, *args)
    elif nproc is not None and nproc > 1:
        if backend_for(device) == "nccl" and nproc > torch.cuda.device_count():
            raise ConfigError(
                f"--nproc {nproc} on CUDA needs {nproc} GPUs, this machine has "
                f"{torch.cuda.device_count()} (NCCL runs one process per GPU); use at most "
                "that many, or train.device=cpu for gloo"
            )
        port = master_port or free_port()
        with tempfile.TemporaryDirectory(prefix="kdlab-ranks-") as reports, _quiet_spawn():
            try:  # idist.spawn: what idist.Parallel runs, without its INFO lines
                idist.spawn(
                    backend_for(device),
                    _reporting,
                    args=(fn, reports, *args),
                    nproc_per_node=nproc,
                    master_addr="127.0.0.1",
                    master_port=port,
                )
            except KeyboardInterrupt:  # SIGINT to the launcher alone: the workers stop too
                _stop_workers()
                raise
            except ProcessException:
                raise _reported_error(reports) from None
    else:
        fn(0, *args)


def _reporting(local_rank: int, fn: Callable[..., Any], reports: str, *args: Any) -> None:
    """A spawned worker: a kdlab error is written for the launcher (which raises it as
    one line) instead of a traceback, and the worker exits with status 2."""
    try:
        fn(local_rank, *args)
    except KdlabError as err:
        report = {"type": type(err).__name__, "message": str(err)}
        (Path(reports) / f"rank-{rank():05d}.json").write_text(json.dumps(report))
        _leave_group()
        sys.exit(2)
    except BaseException:
        _leave_group()
        raise


def _leave_group() -> None:
    """A failed or interrupted worker leaves the process group before it exits, as a
    finished one does (Ignite finalizes only after ``fn`` returns): a gloo group still up
    at interpreter exit can abort the worker ("terminate called without an active
    exception") and hide its real exit status."""
    with contextlib.suppress(Exception):
        idist.finalize()


def _reported_error(reports: str) -> BaseException:
    """The lowest rank's kdlab error, or the original exception (a bug: its traceback)."""
    found = sorted(Path(reports).glob("rank-*.json"))
    if not found:
        return sys.exc_info()[1] or RuntimeError("a worker failed")
    report = json.loads(found[0].read_text())
    kind = getattr(errors, str(report.get("type")), None)
    if not (isinstance(kind, type) and issubclass(kind, KdlabError)):
        kind = KdlabError
    return kind(report.get("message", ""))


def _stop_workers(grace: float = 10.0) -> None:
    """Interrupt the spawned workers (they release the run folder as they unwind); kill
    those still running after ``grace`` seconds (blocked in a collective, say)."""
    children = multiprocessing.active_children()
    for child in children:
        if child.pid is not None:
            with contextlib.suppress(OSError):
                os.kill(child.pid, signal.SIGINT)
    deadline = time.monotonic() + grace
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
    for child in children:
        if child.is_alive():
            child.kill()
            child.join()


@contextlib.contextmanager
def _quiet_spawn() -> Iterator[None]:
    # torch logs "Terminating process N via signal SIGTERM" when one worker fails; the
    # launcher reports the failure itself.
    logger = logging.getLogger("torch.multiprocessing.spawn")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def local_device(device: torch.device) -> torch.device:
    """Each rank's own GPU (``cuda:LOCAL_RANK``); CPU ranks share the CPU."""
    if world_size() > 1 and device.type == "cuda":
        device = torch.device("cuda", idist.get_local_rank())
        torch.cuda.set_device(device)
    return device


def per_rank_batch(batch_size: int, n: int | None = None) -> int:
    """The share of the global batch ``data.batch_size`` that each of ``n`` ranks
    (default: this run's) takes."""
    n = world_size() if n is None else n
    if batch_size % n:
        raise ConfigError(
            f"data.batch_size {batch_size} is the global batch and must divide evenly over "
            f"{n} processes (use a multiple of {n})"
        )
    return batch_size // n


def wrap(module: nn.Module, device: torch.device, find_unused: bool) -> nn.Module:
    """DDP around ``module`` when distributed (only parameters that require grad sync).

    ``find_unused`` must be set when a step may leave trainable parameters without a
    gradient (pre-stages that train the whole student on a partial loss, terms idle in
    a stage): DDP then marks them ready instead of waiting for them forever.
    """
    if world_size() <= 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        module,
        device_ids=ids,
        output_device=ids[0] if ids else None,
        find_unused_parameters=find_unused,
    )


def reduce_sums(sums: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Sum each value over ranks (one collective for all of them)."""
    if world_size() <= 1 or not sums:
        return dict(sums)
    keys = sorted(sums)
    flat = torch.stack([sums[k].detach().to(torch.float64).reshape(()) for k in keys])
    flat = idist.all_reduce(flat)
    return {k: flat[i] for i, k in enumerate(keys)}


def gather_rows(t: Tensor) -> Tensor:
    """Every rank's ``t`` concatenated along dimension 0, in rank order (shards may
    differ in length, empty ones included)."""
    if world_size() <= 1:
        return t
    shapes: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(shapes, tuple(t.shape))
    trailing = next((s[1:] for s in shapes if s[0] > 0), tuple(t.shape[1:]))
    if t.shape[0] == 0:
        t = t.reshape(0, *trailing)
    shapes = [(s[0], *trailing) for s in shapes]
    parts = idist.all_gather_tensors_with_shapes(t.to(idist.device()), shapes)
    return torch.cat([p.cpu() for p in parts])


def broadcast_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rank 0's tensors on every rank; the others pass tensors of the same shapes (e.g.
    their own weights) to receive into."""
    if world_size() <= 1:
        return state
    out = {}
    for key in sorted(state):
        value = state[key].detach().clone().to(idist.device())
        out[key] = idist.broadcast(value, src=0).to(state[key].device)
    return out


def broadcast_json(obj: Any) -> Any:
    """Rank 0's JSON-able ``obj`` on every rank (others pass anything)."""
    if world_size() <= 1:
        return obj
    text = json.dumps(obj) if is_main() else ""
    return json.loads(idist.broadcast(text, src=0, safe_mode=True))


def barrier() -> None:
    if world_size() > 1:
        idist.barrier()
