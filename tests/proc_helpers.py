"""Helpers for tests that run kdlab in a subprocess."""

from __future__ import annotations

import signal


def interrupted(returncode: int | None, stderr: str) -> bool:
    """``kdlab`` handled a Ctrl-C: its one line is the last thing on stderr, and it exited
    with 130, or by SIGINT itself. ``python -m kdlab`` (CPython 3.11) sometimes ends a
    process whose KeyboardInterrupt kdlab caught by SIGINT (4 of 40 SIGINTs here; through
    a script entry, as the ``kdlab`` console script runs, 0 of 70): a shell reports both
    as status 130, and both are an interrupted run."""
    lines = stderr.splitlines()
    return returncode in (130, -signal.SIGINT) and bool(lines) and lines[-1] == "kdlab: interrupted"
