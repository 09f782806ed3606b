"""``kdlab demo``: teacher, vanilla student and distilled students on digits."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a teacher and distilled students on digits")
    p.add_argument("--methods", default="kd,logits", help="comma-separated, or 'all'")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="student epochs (default 20)")
    p.add_argument("--teacher-epochs", type=int, default=None, help="default 30")
    p.add_argument("--out", default="runs/demo")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kdlab.demo import run_demo  # noqa: PLC0415

    table, _, _ = run_demo(args.methods, args.seeds, args.out, args.epochs, args.teacher_epochs)
    print(table)
    print(f"\n(saved to {args.out}/results.md and results.csv)")
    return 0
