"""kdlab: knowledge distillation with the classic transfer methods, one honest protocol."""

from kdlab.distiller import Distiller, DistillOutput
from kdlab.errors import KdlabError
from kdlab.methods import METHODS, Term, build_term, build_terms
from kdlab.models import MODELS, create_model
from kdlab.taps import FeatureTaps, Tap, probe_shapes, select_output

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "MODELS",
    "DistillOutput",
    "Distiller",
    "FeatureTaps",
    "KdlabError",
    "Tap",
    "Term",
    "build_term",
    "build_terms",
    "create_model",
    "probe_shapes",
    "select_output",
]
