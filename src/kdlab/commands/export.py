"""``kdlab export RUN --format onnx|torchscript``: the selected student, for deployment.

The student is rebuilt from the run folder's ``config.yaml`` (plugins included) and
loaded with its ``model.safetensors``; the exported graph takes the data's input with a
dynamic batch axis and returns the logits alone (a Hugging Face model's ``.logits``).

- ``onnx``: PyTorch's TorchScript-based ONNX exporter (fast; it needs the ``onnx``
  package: ``pip install 'kdlab[export]'``, which adds ``onnxruntime`` too). When
  onnxruntime is installed, the file is run on a batch of another size and the largest
  difference from PyTorch's logits is printed.
- ``torchscript``: ``torch.jit.trace``, loadable with ``torch.jit.load`` without kdlab.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.errors import CheckpointError, ConfigError, KdlabError

SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run's selected student to ONNX or TorchScript")
    p.add_argument("run", help="a run folder (with config.yaml and model.safetensors)")
    p.add_argument("--format", choices=sorted(SUFFIX), default="onnx")
    p.add_argument("--out", help="output file (default: RUN/model.onnx or model.torchscript.pt)")
    p.add_argument("--weights", default="model.safetensors", help="file in the run folder")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: PyTorch's)")
    p.set_defaults(func=run_export)


class LogitsOnly(nn.Module):
    """The model with its output reduced to the logits tensor (exporters want tensors)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        from kdlab.taps import model_logits  # noqa: PLC0415

        return model_logits(self.model(x))


def read_run_student(run: Path, weights: str = "model.safetensors") -> tuple[nn.Module, Tensor]:
    """A finished run's student (in eval mode) and two of its training inputs.

    The one place export reads a run folder: ``config.yaml`` and the weights file.
    """
    from kdlab.config import load_config  # noqa: PLC0415
    from kdlab.data import build_dataset  # noqa: PLC0415
    from kdlab.engine import load_model  # noqa: PLC0415

    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{str(run)!r} is not a run folder: it has no config.yaml")
    if not (run / weights).is_file():
        raise CheckpointError(
            f"run {str(run)!r} has no {weights!r}: has it finished? (kdlab train ... --resume)"
        )
    cfg = load_config(run / "config.yaml")
    data = build_dataset(cfg.data)
    model = load_model(
        cfg.student.name, cfg.student.kwargs, str(run / weights), data.num_classes, data.in_channels
    )
    split = data.train
    example = split.example(2) if hasattr(split, "example") else split.x[:2]
    return model.eval(), example


def export_onnx(model: nn.Module, example: Tensor, path: Path, opset: int | None = None) -> None:
    """Write ``model`` as ONNX with input ``input`` and output ``logits``, batch dynamic."""
    if importlib.util.find_spec("onnx") is None:  # PyTorch's exporter writes through it
        raise ConfigError(
            "--format onnx needs the onnx package: pip install 'kdlab[export]' "
            "(or use --format torchscript)"
        )
    kwargs: dict[str, Any] = {
        "input_names": ["input"],
        "output_names": ["logits"],
        "dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}},
        "opset_version": opset,
    }
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:  # torch >= 2.5: two exporters
        kwargs["dynamo"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
        torch.onnx.export(LogitsOnly(model).eval(), (example,), str(path), **kwargs)


def export_torchscript(model: nn.Module, example: Tensor, path: Path) -> None:
    """Write ``model`` traced on ``example`` (any batch size works when loaded back)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(LogitsOnly(model).eval(), (example,), check_trace=False)
    traced.save(str(path))


def onnx_max_diff(model: nn.Module, path: Path, x: Tensor) -> float | None:
    """Largest |ONNX Runtime - PyTorch| over the logits of ``x``; None without onnxruntime."""
    try:
        import onnxruntime as ort  # noqa: PLC0415 - optional extra
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = LogitsOnly(model)(x)
    return float((torch.from_numpy(got) - want).abs().max())


def run_export(args: argparse.Namespace) -> int:
    run = Path(args.run)
    model, example = read_run_student(run, args.weights)
    model = model.cpu()
    example = example.cpu()
    out = Path(args.out) if args.out else run / f"model{SUFFIX[args.format]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if args.format == "onnx":
            export_onnx(model, example, out, args.opset)
        else:
            export_torchscript(model, example, out)
    except KdlabError:
        raise
    except Exception as err:  # an operator the exporter cannot express, say
        raise ConfigError(
            f"cannot export {type(model).__name__} from {str(run)!r} as {args.format}: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    report: dict[str, Any] = {
        "run": str(run),
        "format": args.format,
        "file": str(out),
        "input": ["batch", *example.shape[1:]],
        "input_dtype": str(example.dtype).replace("torch.", ""),
    }
    if args.format == "onnx":
        # Another batch size than the traced one: the batch axis must really be dynamic.
        check = torch.cat([example, example, example[:1]])
        report["onnxruntime_max_abs_diff"] = onnx_max_diff(model, out, check)
    print(json.dumps(report, indent=2))
    return 0
