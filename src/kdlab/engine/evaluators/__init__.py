"""Evaluators: what a run is scored and selected on, one file each.

Importing this package registers every evaluator in it (``accuracy``, ``retrieval``,
...): adding a selection metric means adding one file here.
"""

from __future__ import annotations

import importlib
import pkgutil

from kdlab.engine.evaluators.base import EVALUATORS, Evaluator, build_evaluator, selection

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["EVALUATORS", "Evaluator", "build_evaluator", "selection"]
