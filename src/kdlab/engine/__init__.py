"""The training engine: stages on PyTorch Ignite, evaluation, checkpoints."""

from kdlab.engine.evaluate import evaluate
from kdlab.engine.runner import RunResult, Trainer, load_model, train
from kdlab.rundir import RunDir

__all__ = ["RunDir", "RunResult", "Trainer", "evaluate", "load_model", "train"]
