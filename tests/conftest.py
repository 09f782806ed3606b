"""Shared fixtures: small models, a saved teacher, tmp run folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdlab.engine.checkpoint import save_weights
from kdlab.models import create_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) cnn_medium teacher for digits saved as safetensors."""
    torch.manual_seed(123)
    model = create_model("cnn_medium", 10, 1)
    path = tmp_path_factory.mktemp("teacher") / "model.safetensors"
    save_weights(path, model.state_dict())
    return path
