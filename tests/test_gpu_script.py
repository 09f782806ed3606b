"""benchmarks/gpu.py keeps up with the engine: its ``--smoke`` run drives the same code
(recipes, Trainer, train(), the step's precision, the streaming loader) on the CPU with
tiny models, and without CUDA the real run refuses with one line and status 2."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu():  # noqa: ANN201 - the script's module
    spec = importlib.util.spec_from_file_location("kdlab_bench_gpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_smoke_run_drives_every_cpu_path_through_the_engine(gpu, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "gpu.md"
    assert gpu.main(["--smoke", "--out", str(out)]) == 0
    text = out.read_text()
    for path in ("bf16 autocast", "channels_last", "streaming train()"):
        assert f"| {path} | ok: " in text, path
    for path in ("fp16 + GradScaler", "torch.compile", "NCCL, one rank"):
        assert f"| {path} | skipped on cpu |" in text, path
    rows = [line for line in text.splitlines() if re.match(r"\| cnn_tiny -> cnn_tiny", line)]
    assert len(rows) == 6  # 2 pairs x (fp32, bf16) on synthetic data, 2 streamed
    for row in rows:
        rates = [c.strip().replace(",", "") for c in row.strip("|").split("|")[4:]]
        assert all(float(r) > 0 for r in rates if r), row


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_the_real_run_refuses(gpu, capsys: pytest.CaptureFixture) -> None:  # noqa: ANN001
    assert gpu.main([]) == 2
    assert "no CUDA device here" in capsys.readouterr().err
