"""kdlab's own error types.

Every mistake a user can make (a config key, a file, a layer, a value) raises a
subclass of :class:`KdlabError` whose message names what is wrong and what would be
valid. The CLI prints these without a traceback; anything else is a bug in kdlab.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KdlabError(Exception):
    """Base class of every error kdlab raises for bad user input or state."""


class ConfigError(KdlabError, ValueError):
    """A recipe key, type or value is invalid."""


class RegistryError(KdlabError, KeyError):
    """A name is not registered, or registered twice."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TapError(KdlabError, ValueError):
    """A tap names a module path that does not exist, or shapes do not fit a method."""


class DataError(KdlabError, ValueError):
    """A dataset folder, file, layout or label is invalid."""


class ModelError(KdlabError, ValueError):
    """A model cannot be built, or teacher and student do not fit together."""


class CheckpointError(KdlabError, ValueError):
    """A checkpoint is missing, unreadable, corrupted or unsafe."""


class NumericalError(KdlabError, FloatingPointError):
    """A loss or input became NaN or infinite."""


class RunFolderError(KdlabError, ValueError):
    """A run folder is in use, holds another run, or lacks a file a reader needs."""


def did_you_mean(name: str, valid: Iterable[str], n: int = 3) -> str:
    """A short hint listing the closest valid names to ``name``."""
    valid = sorted(set(valid))
    close = difflib.get_close_matches(name, valid, n=n, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    shown = ", ".join(valid[:25]) + (" ..." if len(valid) > 25 else "")
    return f"valid: {shown}" if valid else "nothing is registered"
