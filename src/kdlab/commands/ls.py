"""``kdlab ls models|methods|datasets|views``."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ls", help="list registered models, methods, datasets or views")
    p.add_argument("what", choices=["models", "methods", "datasets", "views"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kdlab.data import DATASETS  # noqa: PLC0415
    from kdlab.methods import METHODS  # noqa: PLC0415
    from kdlab.models import MODELS  # noqa: PLC0415
    from kdlab.views import VIEWS  # noqa: PLC0415

    registry = {"models": MODELS, "methods": METHODS, "datasets": DATASETS, "views": VIEWS}[
        args.what
    ]
    for name, obj in registry.items():
        print(f"{name:24s} {describe(obj) or '(no description)'}")
    return 0


def describe(obj: object) -> str:
    """The first line of a registered object's docstring: its one-line description."""
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    return doc[0].strip() if doc else ""
