"""Bench hooks, one file each; importing this package registers all of them.

Every module in this package is imported (like ``kdlab.methods``), so a study that
needs a new data transform or pre-step adds one file here and names it in its spec.
"""

from __future__ import annotations

import importlib
import pkgutil

from kdlab.bench.hooks.base import (
    DATA_HOOKS,
    PRE_STEPS,
    HookCall,
    HookContext,
    bind_hook,
)

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["DATA_HOOKS", "PRE_STEPS", "HookCall", "HookContext", "bind_hook"]
