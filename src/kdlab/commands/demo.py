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
    p.add_argument(
        "--cross",
        action="store_true",
        help="cross-architecture pair: cnn_medium -> resnet8 (recipes' taps remapped)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kdlab.demo import CROSS_STUDENT, CROSS_TAP_MAP, STUDENT, run_demo  # noqa: PLC0415

    table, _, _ = run_demo(
        args.methods,
        args.seeds,
        args.out,
        args.epochs,
        args.teacher_epochs,
        student=CROSS_STUDENT if args.cross else STUDENT,
        tap_map=CROSS_TAP_MAP if args.cross else None,
    )
    print(table)
    print(f"\n(saved to {args.out}/results.md and results.csv)")
    return 0
