"""Methods: one file each; importing this package registers all of them.

Every module in this package is imported, so adding a method means adding one file.
"""

from __future__ import annotations

from kdlab.methods.base import (
    METHODS,
    Pass,
    Shapes,
    StageConfig,
    StepContext,
    Term,
    TermParams,
    build_term,
    build_terms,
)
from kdlab.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = [
    "METHODS",
    "Pass",
    "Shapes",
    "StageConfig",
    "StepContext",
    "Term",
    "TermParams",
    "build_term",
    "build_terms",
]
