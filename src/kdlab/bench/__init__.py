"""Benchmarks: every "arms x seeds -> paired table" study of kdlab, one runner.

``kdlab bench PROTOCOL`` expands a protocol into its matrix (arms x pairs x conditions
x seeds), validates every cell, trains what is not yet finished (teachers once, every
run cached by its config and hooks), and writes a report folder. Studies differ only
by their spec and registered hooks (:mod:`kdlab.bench.hooks`).
"""

from kdlab.bench.matrix import RunSpec, config_hash, expand
from kdlab.bench.protocol import Protocol, builtin_protocols, load_protocol, parse_seeds
from kdlab.bench.report import run_rows, summary_tables, write_report
from kdlab.bench.run import RunRecord, is_done, run_matrix

__all__ = [
    "Protocol",
    "RunRecord",
    "RunSpec",
    "builtin_protocols",
    "config_hash",
    "expand",
    "is_done",
    "load_protocol",
    "parse_seeds",
    "run_matrix",
    "run_rows",
    "summary_tables",
    "write_report",
]
