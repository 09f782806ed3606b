"""Shared plumbing of the cqd / omni / metric protocols: arguments and the saved table."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlab.report import markdown_table, write_csv


def protocol_parser(
    sub: argparse._SubParsersAction, name: str, doc: str, config: str
) -> argparse.ArgumentParser:
    """The protocol's ``kdlab protocol NAME`` parser with the shared options."""
    p = sub.add_parser(
        name,
        help=doc.strip().splitlines()[0].split(": ", 1)[-1].replace("%", "%%"),
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=config, help=f"the recipe (default: {config})")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the recipe, key=value")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run seeds")
    p.add_argument("--epochs", type=int, help="override train.epochs of every run")
    p.add_argument("--out", help=f"output folder (default: reports/protocols/{name})")
    p.add_argument("--progress", action="store_true", help="show per-run progress bars")
    return p


def standalone(add: Any, name: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` with a protocol's ``add_parser`` outside the ``kdlab`` CLI."""
    from kdlab.cli import Parser  # noqa: PLC0415 - no abbreviations, as in `kdlab`

    root = Parser(prog="kdlab protocol")
    add(root.add_subparsers(dest="protocol"))
    return root.parse_args([name, *(argv or [])])


def command(name: str, args: argparse.Namespace, extra: Sequence[str] = ()) -> str:
    """The ``kdlab protocol`` command line that reproduces this run."""
    parts = ["kdlab protocol", name, "--seeds", *map(str, args.seeds)]
    if args.epochs is not None:
        parts += ["--epochs", str(args.epochs)]
    for key in extra:
        value = getattr(args, key.replace("-", "_"), None)
        if value is not None:
            vals = value if isinstance(value, list) else [value]
            parts += [f"--{key}", *map(str, vals)]
    if args.out:
        parts += ["--out", args.out]
    parts += [f"'{o}'" if " " in o else o for o in args.overrides]
    return " ".join(parts)


def out_dir(args: argparse.Namespace, name: str) -> Path:
    path = Path(args.out or f"reports/protocols/{name}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_overrides(args: argparse.Namespace, prefix: str = "") -> list[str]:
    """The user's overrides plus ``--epochs`` and the progress switch."""
    extra = [f"{prefix}train.progress={'true' if args.progress else 'false'}"]
    if args.epochs is not None:
        extra.append(f"{prefix}train.epochs={args.epochs}")
    return list(args.overrides) + extra


def paired_gain(arm: Sequence[float], base: Sequence[float]) -> str:
    """``mean +- std`` of the per-seed differences ``arm - base`` (same seeds, same order)."""
    from kdlab.report import fmt_mean_std  # noqa: PLC0415

    if len(arm) != len(base) or not arm:
        return "-"
    return fmt_mean_std([a - b for a, b in zip(arm, base)])


def save_table(
    out: Path,
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    records: Sequence[dict[str, Any]],
    notes: Sequence[str] = (),
    command: str = "",
) -> str:
    """Print and save the table as ``table.md`` and the per-run records as ``runs.csv``."""
    table = markdown_table(headers, rows)
    parts = [f"## {title}", ""]
    if command:
        parts += [f"Command: `{command}`", ""]
    parts += [table, ""]
    parts += [f"- {n}" for n in notes]
    text = "\n".join(parts).rstrip() + "\n"
    (out / "table.md").write_text(text)
    write_csv(out / "runs.csv", list(records))
    (out / "runs.json").write_text(json.dumps(list(records), indent=2))
    print(text)
    print(f"saved {out / 'table.md'} and {out / 'runs.csv'}")
    return text
