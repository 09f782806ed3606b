"""``kdlab bench PROTOCOL``: run a benchmark matrix and write its report."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run a benchmark protocol (methods x pairs x seeds) and write a report",
        description=(
            "Run a protocol's matrix of methods x teacher-student pairs x seeds, resuming "
            "whatever a previous (killed) invocation left unfinished, then write the report "
            "folder: runs.csv, table.md, gain.png, curves.png. PROTOCOL is a shipped name "
            "(see --list) or a path to a protocol YAML file."
        ),
    )
    p.add_argument("protocol", nargs="?", help="protocol name or YAML path")
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides of the base recipe, e.g. data.root=/data"
    )
    p.add_argument("--seeds", nargs="+", type=int, help="replace the protocol's seeds")
    p.add_argument(
        "--methods", nargs="+", help="run only these methods (vanilla is always included)"
    )
    p.add_argument("--out", help="benchmark folder (default: runs/bench/<protocol>)")
    p.add_argument("--report", help="report folder (default: <out>/report)")
    p.add_argument("--no-plots", action="store_true", help="skip the matplotlib plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--fail-fast", action="store_true", help="stop at the first failing run (default: go on)"
    )
    p.add_argument("--list", action="store_true", help="list the shipped protocols and exit")
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from kdlab.bench import builtin_protocols, load_protocol, run_matrix, write_report  # noqa: PLC0415
    from kdlab.errors import ConfigError  # noqa: PLC0415

    if args.list:
        for name in builtin_protocols():
            print(name)
        return 0
    if not args.protocol:
        raise ConfigError("kdlab bench needs a PROTOCOL (a name from --list or a YAML path)")
    methods = None
    if args.methods:
        methods = [m for item in args.methods for m in item.split(",") if m]
    proto = load_protocol(args.protocol, methods=methods, seeds=args.seeds)
    out = Path(args.out) if args.out else Path("runs") / "bench" / proto.name
    failures: list = []
    records = run_matrix(
        proto,
        out,
        args.overrides,
        progress=not args.no_progress,
        keep_going=not args.fail_fast,
        failures=failures,
    )
    command = _command_line(args)
    paths = write_report(
        proto,
        records,
        Path(args.report) if args.report else out / "report",
        command=command,
        plots=not args.no_plots,
        failures=failures,
    )
    print(paths["table"].read_text())
    for key, path in paths.items():
        print(f"{key}: {path}")
    if failures:
        print(f"kdlab bench: {len(failures)} run(s) failed; see error.txt in their folders")
        return 1
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The invocation, for the report (rebuilt from the parsed arguments)."""
    parts = ["kdlab", "bench", args.protocol, *args.overrides]
    if args.seeds:
        parts += ["--seeds", *map(str, args.seeds)]
    if args.methods:
        parts += ["--methods", *args.methods]
    if args.out:
        parts += ["--out", args.out]
    return " ".join(shlex.quote(p) for p in parts)
