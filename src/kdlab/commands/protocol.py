"""``kdlab protocol NAME ...``: the benchmark protocols, one module each.

Every module in :mod:`kdlab.protocols` that defines ``add_parser(subparsers)`` adds its
own ``kdlab protocol <name>`` parser, so adding a protocol means adding one file there.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil


def add_parser(sub: argparse._SubParsersAction) -> None:
    import kdlab.protocols as protocols  # noqa: PLC0415

    p = sub.add_parser("protocol", help="run a benchmark protocol and save its table")
    names = p.add_subparsers(dest="protocol", metavar="NAME", required=True)
    for info in sorted(pkgutil.iter_modules(protocols.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"kdlab.protocols.{info.name}")
        adder = getattr(module, "add_parser", None)
        if callable(adder):
            adder(names)
