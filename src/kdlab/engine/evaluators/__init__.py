"""Evaluators: what a run is scored and selected on, one file each.

Importing this package registers every evaluator in it (``accuracy``, ``retrieval``,
...): adding a selection metric means adding one file here.
"""

from __future__ import annotations

from kdlab.engine.evaluators.base import EVALUATORS, Evaluator, build_evaluator, selection
from kdlab.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["EVALUATORS", "Evaluator", "build_evaluator", "selection"]
