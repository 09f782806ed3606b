"""The training engine: stages on PyTorch Ignite, handlers, evaluators, checkpoints.

See ``docs/engine.md``: ``train`` is the one way to train; ``Handler`` subclasses
attach to its events; ``Evaluator`` subclasses (one file each in ``evaluators/``)
score validation and test.
"""

from kdlab.engine.evaluate import evaluate
from kdlab.engine.evaluators import EVALUATORS, Evaluator
from kdlab.engine.handlers import Handler, ReportProgress, StageRun, Timing
from kdlab.engine.runner import RunResult, Trainer, load_model, train
from kdlab.rundir import RunDir

__all__ = [
    "EVALUATORS",
    "Evaluator",
    "Handler",
    "ReportProgress",
    "RunDir",
    "RunResult",
    "StageRun",
    "Timing",
    "Trainer",
    "evaluate",
    "load_model",
    "train",
]
