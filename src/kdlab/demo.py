"""The demo: the shipped ``demo`` protocol, run by the one matrix runner.

``kdlab demo`` is ``kdlab bench demo`` with the demo's defaults (kd and logits beside
the vanilla student, the same-family pair); ``--cross`` picks the cross-architecture
pair, whose student taps the protocol renames (``CROSS_TAP_MAP``).
"""

from __future__ import annotations

import argparse
from typing import Any

from kdlab.bench.protocol import ProtocolSpec, protocol_path, rename_student_taps
from kdlab.config import read_yaml, validate

PROTOCOL = "demo"
_PAIRS = validate(ProtocolSpec, read_yaml(protocol_path(PROTOCOL))).pairs
PAIR, CROSS_PAIR = _PAIRS[0], _PAIRS[1]
STUDENT, CROSS_STUDENT = PAIR.student.name, CROSS_PAIR.student.name
CROSS_TAP_MAP = dict(CROSS_PAIR.student_taps)


def remap_student_taps(distill: dict[str, Any], tap_map: dict[str, str]) -> dict[str, Any]:
    """A copy of a ``distill`` section with student tap paths renamed by prefix."""
    return rename_student_taps(distill, tap_map)


def run_demo(args: argparse.Namespace) -> tuple[str, int]:
    """Run the demo protocol with ``kdlab demo``'s parsed options; the table, exit code."""
    from kdlab.commands.bench import overrides_of, run_protocol  # noqa: PLC0415

    args.pairs = [(CROSS_PAIR if args.cross else PAIR).label]
    return run_protocol(PROTOCOL, args, overrides_of(args))
