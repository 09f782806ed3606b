"""Methods: one file each; importing this package registers all of them.

Every module in this package is imported, so adding a method means adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil

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

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

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
