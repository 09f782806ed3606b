"""``kdlab demo``: the demo protocol (digits, a teacher and distilled students)."""

from __future__ import annotations

import argparse

from kdlab.commands.bench import add_matrix_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train a teacher and distilled students on digits (= kdlab bench demo)",
        description=(
            "Run the shipped 'demo' protocol: a cnn_medium teacher on the bundled digits, "
            "then the vanilla, kd and logits students over 3 seeds, and print the table. "
            "The same as 'kdlab bench demo --methods kd logits --pairs cnn_medium-cnn_small'."
        ),
    )
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides of every run, e.g. train.epochs=5"
    )
    add_matrix_options(p)
    p.set_defaults(methods=["kd", "logits"])
    p.add_argument(
        "--cross",
        action="store_true",
        help="the cross-architecture pair: cnn_medium -> resnet8 (recipes' taps renamed)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kdlab.demo import run_demo  # noqa: PLC0415

    table, code = run_demo(args)
    print(table)
    return code
