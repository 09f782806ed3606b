"""Input views: batched tensor transforms, one registry, one home.

A recipe names its views (``distill.views: {noisy: {type: gaussian_noise, sigma: 0.1}}``)
and a term picks one for the student and one for the teacher (``student_view: noisy``).
Within one step a view is computed once, so teacher and student asking for the same
view see the very same tensor (the same noise sample, say). The view ``default`` is the
batch as the data pipeline gave it.

Every batched transform of kdlab lives here and is registered in :data:`VIEWS`:
noise (``noise.py``), signal degradations for cross quality distillation
(``degrade.py``), the geometric transforms of data distillation's multi-transform
inference (``geometric.py``) and training augmentation (``augment.py``). Every module in
this package is imported, so adding a view means adding one file.
"""

from __future__ import annotations

from kdlab.registry import import_submodules
from kdlab.views.base import (
    DEFAULT,
    VIEWS,
    InputView,
    ViewFn,
    as_view,
    build_view,
    build_views,
    check_view,
    identity,
)

import_submodules(__name__, __path__)

__all__ = [
    "DEFAULT",
    "VIEWS",
    "InputView",
    "ViewFn",
    "as_view",
    "build_view",
    "build_views",
    "check_view",
    "identity",
]
