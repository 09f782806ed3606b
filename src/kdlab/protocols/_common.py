"""Shared plumbing of the cqd / omni / metric protocols: arguments and the saved table."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlab.report import markdown_table, write_csv


def parser(name: str, description: str, config: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"kdlab protocol {name}", description=description)
    p.add_argument("--config", default=config, help=f"the recipe (default: {config})")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the recipe, key=value")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run seeds")
    p.add_argument("--epochs", type=int, help="override train.epochs of every run")
    p.add_argument("--out", help=f"output folder (default: reports/protocols/{name})")
    p.add_argument("--progress", action="store_true", help="show per-run progress bars")
    return p


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
