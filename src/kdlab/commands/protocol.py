"""``kdlab protocol NAME [args]``: run a benchmark protocol and save its table.

Each protocol is a module with ``main(argv) -> int``; add one by adding a line to
``PROTOCOLS`` (name -> module). ``kdlab protocol NAME --help`` lists its options.
"""

from __future__ import annotations

import argparse
import importlib

PROTOCOLS: dict[str, str] = {
    "cqd": "kdlab.protocols.cqd",
    "omni": "kdlab.protocols.omni",
    "metric": "kdlab.protocols.metric",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "protocol",
        help="run a protocol (" + ", ".join(sorted(PROTOCOLS)) + ") and save its table",
        add_help=False,
    )
    p.add_argument("name", choices=sorted(PROTOCOLS), help="which protocol")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the protocol's own arguments")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(PROTOCOLS[args.name])
    return int(module.main(list(args.args)) or 0)
