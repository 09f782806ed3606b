"""Benchmarks: protocols (methods x teacher-student pairs x seeds), runs and reports.

``kdlab bench PROTOCOL`` expands a protocol into its matrix, trains what is not yet
finished (teachers once per seed, cached by config hash), and writes a report folder.
"""

from kdlab.bench.protocol import (
    Protocol,
    RunSpec,
    builtin_protocols,
    config_hash,
    expand,
    load_protocol,
)
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
    "run_matrix",
    "run_rows",
    "summary_tables",
    "write_report",
]
