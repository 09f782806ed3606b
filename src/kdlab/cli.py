"""``kdlab``: the command line. Each subcommand lives in ``kdlab/commands/<name>.py``.

A command module defines ``add_parser(subparsers)`` that adds its parser and sets
``func`` (taking the parsed args, returning an exit code). User errors
(:class:`~kdlab.errors.KdlabError`) print as one message without a traceback;
``--debug`` shows it.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from kdlab.errors import KdlabError


def build_parser() -> argparse.ArgumentParser:
    import kdlab.commands as commands  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="kdlab", description="Knowledge distillation: train, compare, tune, scale."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    plugin_help = "run this local Python file first: it registers models, methods...; it runs code"
    parser.add_argument(
        "--plugin", action="append", default=[], metavar="FILE.py", help=plugin_help
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"kdlab.commands.{info.name}")
        module.add_parser(sub)
    for command in sub.choices.values():  # also accepted after the command's name
        command.add_argument(
            "--plugin", action="append", dest="plugin_here", metavar="FILE.py", help=plugin_help
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        from kdlab.plugins import load_plugin  # noqa: PLC0415

        for path in args.plugin + (getattr(args, "plugin_here", None) or []):
            load_plugin(path)
        return int(args.func(args) or 0)
    except KdlabError as err:
        if args.debug:
            raise
        print(f"kdlab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
