"""The training engine: stages on PyTorch Ignite, evaluation, checkpoints."""

from kdlab.engine.evaluate import evaluate
from kdlab.engine.runner import RunResult, Trainer, load_model, run_folder, train

__all__ = ["RunResult", "Trainer", "evaluate", "load_model", "run_folder", "train"]
