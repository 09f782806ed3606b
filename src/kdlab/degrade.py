"""Moved to :mod:`kdlab.views.degrade` (this alias goes with its last importer)."""

from kdlab.views.degrade import *  # noqa: F403
from kdlab.views.degrade import degrade_tensor  # noqa: F401
