"""Pipelines: multi-run procedures built from the engine (e.g. data distillation)."""
