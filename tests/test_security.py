"""Untrusted files: checkpoints never run code, recipes never import, YAML stays data."""

from __future__ import annotations

import builtins
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from kdlab.config import load_config, read_yaml
from kdlab.data import build_dataset
from kdlab.engine import checkpoint as ckpt
from kdlab.engine import load_model, train
from kdlab.errors import CheckpointError, ConfigError, RegistryError
from kdlab.methods import build_terms
from kdlab.models import create_model
from kdlab.views import build_views

SRC = Path(__file__).resolve().parents[1] / "src" / "kdlab"


class Payload:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (self.marker, "w"))


def _malicious_checkpoint(folder: Path, marker: Path) -> Path:
    """A checkpoint whose hashes are right but whose state.pt runs code when unpickled."""
    target = folder / "step-000000001"
    target.mkdir(parents=True)
    save_file({"student.fc.weight": torch.zeros(2, 2)}, str(target / "model.safetensors"))
    torch.save({"iteration": 1, "optimizer": Payload(marker)}, target / "state.pt")
    meta = {n: ckpt._sha256(target / n) for n in ("model.safetensors", "state.pt")}
    (target / "meta.json").write_text(json.dumps({"step": 1, **meta}))
    return target


def test_the_payload_is_live(tmp_path: Path) -> None:
    """Guard for the tests below: a plain unpickler does run the payload."""
    marker = tmp_path / "pwned"
    target = _malicious_checkpoint(tmp_path / "c", marker)
    torch.load(target / "state.pt", weights_only=False)
    assert marker.exists()


def test_pickle_checkpoint_is_refused_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    target = _malicious_checkpoint(tmp_path / "checkpoints", marker)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        ckpt.load_state(target / "state.pt")
    warnings: list[str] = []
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        ckpt.load_latest_checkpoint(tmp_path / "checkpoints", warn=warnings.append)
    assert "only loads plain tensors" in warnings[0]
    assert not marker.exists()


def test_resume_from_a_malicious_run_folder(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _malicious_checkpoint(tmp_path / "run" / "checkpoints", marker)
    cfg = load_config(
        {"student": {"name": "cnn_tiny"}, "data": {"per_class": 2}, "train": {"epochs": 1}}
    )
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        train(cfg, run_dir=tmp_path / "run", resume=True)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model.safetensors", "teacher.pt"])
def test_pickle_weights_are_refused(tmp_path: Path, name: str) -> None:
    """Weights load only through safetensors: a pickle under any name is refused."""
    marker = tmp_path / "pwned"
    torch.save({"fc.weight": Payload(marker)}, tmp_path / name)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model("cnn_small", {}, str(tmp_path / name), 10, 1)
    if name == "model.safetensors":  # a run folder holding it
        with pytest.raises(CheckpointError, match="not a readable safetensors file"):
            load_model("cnn_small", {}, str(tmp_path), 10, 1)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "subprocess:run", "kdlab.cli"])
def test_recipes_resolve_names_only_through_registries(name: str) -> None:
    with pytest.raises(RegistryError, match=f"unknown model {re.escape(repr(name))}"):
        create_model(name, 10, 1)
    with pytest.raises(RegistryError, match="unknown dataset"):
        build_dataset(load_config({"student": {"name": "x"}, "data": {"name": name}}).data)
    with pytest.raises(RegistryError, match="unknown method"):
        build_terms([{"method": name}])
    with pytest.raises(RegistryError, match="unknown view"):
        build_views({"v": {"type": name}})


def test_a_recipe_naming_os_system_trains_nothing(tmp_path: Path) -> None:
    cfg = load_config({"student": {"name": "os.system"}, "data": {"per_class": 2}})
    with pytest.raises(RegistryError, match="unknown model 'os.system'"):
        train(cfg, run_dir=tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        "student: !!python/object/apply:os.system ['touch {marker}']\n",
        "student: !!python/object/new:builtins.open ['{marker}', 'w']\n",
        "student: !!python/object:builtins.dict {{}}\n",
        "!!python/name:builtins.eval\n",
    ],
)
def test_yaml_python_tags_are_refused(tmp_path: Path, text: str) -> None:
    marker = tmp_path / "pwned"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text.format(marker=marker))
    with pytest.raises(ConfigError, match="is not valid YAML"):
        read_yaml(recipe)
    with pytest.raises(ConfigError):
        load_config(recipe)
    assert not marker.exists()


def test_source_has_no_unsafe_loaders() -> None:
    """No eval/exec/plain pickle/unsafe YAML in kdlab; every torch.load is weights_only=True."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        for pattern in (
            r"(?<![.\w])eval\(",  # model.eval() is fine
            r"(?<![.\w])exec\(",
            r"\bpickle\.loads?\(",  # only restricted Unpickler subclasses may unpickle
            r"yaml\.(unsafe_)?load\(",
            r"yaml\.(Unsafe|Full)?Loader",
            r"__import__\(",
        ):
            offenders += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, text)]
        if "Unpickler" in text and "def find_class" not in text:
            offenders.append(f"{path.name}: an Unpickler without a find_class allow-list")
        for call in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
            if "weights_only=True" not in call.group(0):
                offenders.append(f"{path.name}: {call.group(0)}")
    assert offenders == []
