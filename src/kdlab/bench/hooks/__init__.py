"""Bench hooks, one file each; importing this package registers all of them.

Every module in this package is imported (like ``kdlab.methods``), so a study that
needs a new data transform or pre-step adds one file here and names it in its spec.
"""

from __future__ import annotations

from kdlab.bench.hooks.base import (
    DATA_HOOKS,
    PRE_STEPS,
    HookCall,
    HookContext,
    bind_hook,
)
from kdlab.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["DATA_HOOKS", "PRE_STEPS", "HookCall", "HookContext", "bind_hook"]
