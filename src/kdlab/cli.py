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
from typing import Any

from kdlab import __version__
from kdlab.errors import KdlabError


class Parser(argparse.ArgumentParser):
    """Every kdlab parser: no abbreviated options, dotted overrides anywhere.

    ``allow_abbrev=False``: ``--resum`` is an error, not ``--resume``. Sub-parsers are
    built with the parent's class, so each one in ``kdlab ...`` is a ``Parser``. A
    command with an ``overrides`` list also takes ``key=value`` words that come after
    an option (``kdlab train R --resume train.epochs=2``); anything else left over is an
    error in that command's usage, not the top level's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        overrides = getattr(ns, "overrides", None)
        if extras and isinstance(overrides, list) and not self._subcommands():
            words = [a for a in extras if "=" in a and not a.startswith("-")]
            ns.overrides = overrides + words
            extras = [a for a in extras if a not in words]
        if extras and not self._subcommands() and self._is_subcommand:
            self.error("unrecognized arguments: " + " ".join(extras))
        return ns, extras

    _is_subcommand = False

    def _subcommands(self) -> bool:
        return any(isinstance(a, argparse._SubParsersAction) for a in self._actions)


class _SubcommandParser(Parser):
    _is_subcommand = True


def build_parser() -> argparse.ArgumentParser:
    import kdlab.commands as commands  # noqa: PLC0415

    parser = Parser(
        prog="kdlab", description="Knowledge distillation: train, compare, tune, scale."
    )
    parser.add_argument("--version", action="version", version=f"kdlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    plugin_help = "run this local Python file first: it registers models, methods...; it runs code"
    parser.add_argument(
        "--plugin", action="append", default=[], metavar="FILE.py", help=plugin_help
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_SubcommandParser
    )
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"kdlab.commands.{info.name}")
        module.add_parser(sub)
    for command in sub.choices.values():  # also accepted after the command's name
        command.add_argument(
            "--plugin", action="append", dest="plugin_here", metavar="FILE.py", help=plugin_help
        )
    return parser


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every sub-parser under it (for checks over the whole CLI)."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                found += all_parsers(sub)
    return found


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
