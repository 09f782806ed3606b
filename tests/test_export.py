"""``kdlab export``: ONNX (checked with onnxruntime) and TorchScript round trips."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from kdlab import cli
from kdlab.commands.export import read_run_student
from kdlab.config import load_config
from kdlab.engine import train


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch digits run (cnn_small, BatchNorm in eval mode when exported)."""
    folder = tmp_path_factory.mktemp("export") / "run"
    cfg = load_config(
        {
            "student": {"name": "cnn_small"},
            "data": {"per_class": 5, "batch_size": 16},
            "train": {"epochs": 1, "progress": False, "threads": 1},
        }
    )
    train(cfg, run_dir=folder)
    return folder


def _batch(n: int) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(n))


def test_onnx_export_matches_pytorch_at_any_batch_size(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "student.onnx"
    assert cli.main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input"] == ["batch", 1, 8, 8] and report["onnxruntime_max_abs_diff"] < 1e-4
    model, _ = read_run_student(run)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [d.shape for d in session.get_inputs()] == [["batch", 1, 8, 8]]
    for n in (1, 7):  # neither is the traced batch size (2)
        x = _batch(n)
        got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        with torch.no_grad():
            want = model(x)
        assert got.shape == (n, 10)
        assert torch.allclose(got, want, atol=1e-4, rtol=0)


def test_torchscript_export_loads_without_kdlab_models(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "student.pt"
    assert cli.main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    loaded = torch.jit.load(str(out))
    model, _ = read_run_student(run)
    x = _batch(5)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5, rtol=0)


def test_export_errors_name_the_folder(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["export", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("student: {name: cnn_small}\n")
    assert cli.main(["export", str(tmp_path)]) == 2
    assert "has no 'model.safetensors'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the export extra were missing
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert cli.main(["export", str(run), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "pip install 'kdlab[export]'" in capsys.readouterr().err
