"""``kdlab bench PROTOCOL``: run a protocol's matrix and write its report."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

SEEDS_HELP = "seeds: '0 1 2', '0,1,2' or '0-2' (replaces the protocol's)"


class ListOption(argparse.Action):
    """A list option (``--seeds 0 1 2``) that leaves ``key=value`` words after it to the
    command's overrides, so ``--seeds 0 data.root=/data`` means what it says."""

    def __call__(
        self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any, _: Any = None
    ) -> None:
        values = list(values)
        words = [v for v in values if "=" in v]
        if words:
            values = [v for v in values if "=" not in v]
            if isinstance(getattr(ns, "overrides", None), list):
                ns.overrides = [*ns.overrides, *words]
            else:  # the positional overrides are not parsed yet: see overrides_of
                ns.late_overrides = [*getattr(ns, "late_overrides", []), *words]
        if not values:
            parser.error(f"{self.option_strings[0]} needs at least one value")
        setattr(ns, self.dest, values)


def overrides_of(args: argparse.Namespace) -> list[str]:
    """Every ``key=value`` word of the command line, wherever it stood."""
    return [*(getattr(args, "overrides", None) or []), *getattr(args, "late_overrides", [])]


def add_matrix_options(p: argparse.ArgumentParser) -> None:
    """The options every matrix command shares (``bench``, ``demo``): one syntax."""
    p.add_argument("--seeds", nargs="+", metavar="SEED", action=ListOption, help=SEEDS_HELP)
    p.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        action=ListOption,
        help="only these arms ('kd at' or 'kd,at')",
    )
    p.add_argument("--out", help="benchmark folder (default: runs/bench/<protocol>)")
    p.add_argument("--no-plots", action="store_true", help="skip the matplotlib plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--fail-fast", action="store_true", help="stop at the first failing run (default: go on)"
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run a protocol (arms x pairs x conditions x seeds) and write its report",
        description=(
            "Run a protocol's matrix of arms x teacher-student pairs x conditions x seeds: "
            "validate every cell first, then train what a previous (killed) invocation "
            "left unfinished, then write the report folder: runs.csv, table.md, gain.png, "
            "curves.png. PROTOCOL is a shipped name (see --list) or a protocol YAML file."
        ),
    )
    p.add_argument("protocol", nargs="?", help="protocol name or YAML path")
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides of every run's recipe, e.g. data.root=/data"
    )
    add_matrix_options(p)
    p.add_argument("--pairs", nargs="+", metavar="PAIR", action=ListOption, help="only these pairs")
    p.add_argument(
        "--conditions", nargs="+", metavar="NAME", action=ListOption, help="only these conditions"
    )
    p.add_argument("--report", help="report folder (default: <out>/report)")
    p.add_argument(
        "--check", action="store_true", help="only validate every cell (nothing trains) and exit"
    )
    p.add_argument("--list", action="store_true", help="list the shipped protocols and exit")
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from kdlab.bench import builtin_protocols  # noqa: PLC0415
    from kdlab.bench.protocol import protocol_path  # noqa: PLC0415
    from kdlab.config import read_yaml  # noqa: PLC0415
    from kdlab.errors import ConfigError  # noqa: PLC0415

    if args.list:
        names = builtin_protocols()
        width = max(map(len, names))
        for name in names:
            print(f"{name:<{width}}  {read_yaml(protocol_path(name)).get('title', '')}")
        return 0
    if not args.protocol:
        raise ConfigError("kdlab bench needs a PROTOCOL (a name from --list or a YAML path)")
    table, code = run_protocol(args.protocol, args, overrides_of(args))
    print(table)
    return code


def run_protocol(protocol: str, args: argparse.Namespace, overrides: list[str]) -> tuple[str, int]:
    """Run ``protocol`` with the parsed matrix options; return its table and exit code."""
    from kdlab.bench import load_protocol, run_matrix, write_report  # noqa: PLC0415
    from kdlab.bench.protocol import split_names  # noqa: PLC0415

    proto = load_protocol(
        protocol,
        methods=split_names(args.methods),
        seeds=args.seeds,
        pairs=split_names(getattr(args, "pairs", None)),
        conditions=split_names(getattr(args, "conditions", None)),
    )
    out = Path(args.out) if args.out else Path("runs") / "bench" / proto.name
    if getattr(args, "check", False):
        from kdlab.bench.run import checked_matrix  # noqa: PLC0415

        runs = checked_matrix(proto, out, overrides)[0]
        trained = len({r.run_dir for r in runs})
        return f"protocol {proto.name!r}: all {trained} runs build; nothing was trained", 0
    failures: list = []
    records = run_matrix(
        proto,
        out,
        overrides,
        progress=not args.no_progress,
        keep_going=not args.fail_fast,
        failures=failures,
    )
    report = getattr(args, "report", None)
    paths = write_report(
        proto,
        records,
        Path(report) if report else out / "report",
        command=_command_line(protocol, args, overrides),
        plots=not args.no_plots,
        failures=failures,
    )
    lines = [paths["table"].read_text(), *(f"{key}: {path}" for key, path in paths.items())]
    if failures:
        lines.append(f"kdlab bench: {len(failures)} run(s) failed; see error.txt in their folders")
    return "\n".join(lines), 1 if failures else 0


def _command_line(protocol: str, args: argparse.Namespace, overrides: list[str]) -> str:
    """The ``kdlab bench`` invocation that reproduces the report."""
    parts = ["kdlab", "bench", protocol, *overrides]
    for option in ("seeds", "methods", "pairs", "conditions"):
        values = getattr(args, option, None)
        if values:
            parts += [f"--{option}", *map(str, values)]
    if args.out:
        parts += ["--out", args.out]
    return " ".join(shlex.quote(p) for p in parts)
