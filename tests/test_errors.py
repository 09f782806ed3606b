"""Bad input gets a kdlab error that names what is wrong and what would be valid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from kdlab.cli import main
from kdlab.config import apply_overrides, load_config
from kdlab.data import DataBundle, TensorSplit, build_dataset
from kdlab.distiller import Distiller
from kdlab.engine import load_model
from kdlab.engine.runner import Trainer
from kdlab.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    KdlabError,
    ModelError,
    RegistryError,
    RunFolderError,
    TapError,
)
from kdlab.methods import StepContext, Term, TermParams, build_terms
from kdlab.models import create_model

SRC = Path(__file__).resolve().parents[1] / "src"
GOOD: dict[str, Any] = {"student": {"name": "cnn_tiny"}, "data": {"per_class": 2}}


class PairParams(TermParams):
    student: list[str] = []
    teacher: list[str] = []


class SelfMSE(Term):
    """MSE between two of the student's own taps: shapes must agree."""

    method = "_test_self_mse"
    Params = PairParams
    needs_teacher = False

    def forward(self, ctx: StepContext) -> Tensor:
        a, b = self.student_taps()
        return F.mse_loss(ctx.s(a), ctx.s(b))


class FeatureMSE(Term):
    """Plain MSE between paired taps, no adapter: shapes must already agree."""

    method = "_test_feature_mse"
    Params = PairParams

    def forward(self, ctx: StepContext) -> Tensor:
        pairs = self.paired_taps()
        return sum(F.mse_loss(ctx.s(s), ctx.t(t)) for s, t in pairs)  # type: ignore[return-value]


def _cfg(extra: dict[str, Any]) -> Any:
    return load_config({**GOOD, **extra})


# ---------------------------------------------------------------- config keys and values


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"trian": {}}, ["unknown key 'trian'", "did you mean 'train'"]),
        ({"train": {"epohcs": 3}}, ["'train.epohcs'", "'epochs'"]),
        ({"train": {"optimizer": {"lr_": 1}}}, ["'train.optimizer.lr_'", "'lr'"]),
        ({"data": {"batchsize": 3}}, ["'data.batchsize'", "'batch_size'"]),
        ({"train": {"epochs": 0}}, ["'train.epochs'", "greater than or equal to 1", "got 0"]),
        ({"train": {"optimizer": {"lr": -1}}}, ["'train.optimizer.lr'", "greater than 0"]),
        ({"train": {"optimizer": {"lr": float("inf")}}}, ["'train.optimizer.lr'", "finite"]),
        ({"train": {"optimizer": {"name": "adam"}}}, ["'train.optimizer.name'", "'sgd'"]),
        ({"train": {"grad_clip": float("nan")}}, ["'train.grad_clip'"]),
        ({"data": {"val_fraction": 1.5}}, ["'data.val_fraction'", "less than 1"]),
        ({"seed": -1}, ["'seed'", "greater than or equal to 0"]),
        ({"seed": 2**70}, ["'seed'", "less than 4294967296"]),
        ({"train": {"epochs": "many"}}, ["'train.epochs'", "integer", "'many'"]),
        ({"train": 3}, ["'train'"]),
    ],
)
def test_config_errors_name_the_key_and_what_is_valid(data: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({**GOOD, **data})
    for word in words:
        assert word in str(info.value)


def test_term_errors_name_the_term() -> None:
    with pytest.raises(ConfigError, match=r"'distill\.terms\.0 \(kd\)\.T': .*greater than 0"):
        build_terms([{"method": "kd", "T": 0}])
    with pytest.raises(
        ConfigError, match=r"unknown key 'distill.terms.0 \(kd\).temp'; valid: T, main_stage,"
    ):
        build_terms([{"method": "kd", "temp": 2}])
    with pytest.raises(RegistryError, match=r"unknown method 'kdd'; did you mean 'kd'"):
        build_terms([{"method": "kdd"}])
    with pytest.raises(ConfigError, match="already exists"):
        build_terms([{"method": "ce"}, {"method": "ce"}])


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("train.epochs", "must look like key.path=value"),
        ("train.epochs.x=1", "'train.epochs' is a int, not a mapping or list"),
        ("train.epochs.x.y=1", "'train.epochs' is a int, not a mapping or list"),
        ("distill.terms.5.weight=1", "'5' is not an index of a list of 1"),
        ("distill.terms.x=1", "'x' is not an index of a list of 1 nor the name of one"),
    ],
)
def test_override_errors(override: str, words: str) -> None:
    base = {**GOOD, "train": {"epochs": 3}, "distill": {"terms": [{"method": "ce"}]}}
    with pytest.raises(ConfigError, match=words.replace(".", r"\.").replace("(", r"\(")):
        apply_overrides(base, [override])


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: {epochs: 3\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ConfigError, match="cannot be read as text"):
        load_config(tmp_path / "bin.yaml")


def test_bad_device_and_model_kwargs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no CUDA device|is not a device"):
        Trainer(_cfg({"train": {"device": "cuda:3"}}), run_dir=tmp_path)
    with pytest.raises(ConfigError, match="is not a device"):
        Trainer(_cfg({"train": {"device": "gpu please"}}), run_dir=tmp_path)
    with pytest.raises(ModelError, match=r"model 'cnn_tiny' with kwargs \{'widths': \[-4\]\}"):
        create_model("cnn_tiny", 10, 1, widths=[-4])
    with pytest.raises(ModelError, match="dropout"):
        create_model("cnn", 10, 1, dropout=2.0)
    with pytest.raises(ModelError, match="unexpected keyword"):
        create_model("cnn_tiny", 10, 1, colour="red")
    with pytest.raises(RegistryError, match="did you mean 'cnn_tiny'"):
        create_model("cnn_tny", 10, 1)


def test_run_folder_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("in the way")
    trainer = Trainer(_cfg({}), run_dir=tmp_path / "file" / "run")
    with pytest.raises(RunFolderError, match="run folder .* cannot be created"):
        trainer.run()


# ---------------------------------------------------------------- models, taps, shapes


def test_teacher_with_other_class_count() -> None:
    student, teacher = create_model("cnn_small", 10, 1), create_model("cnn_medium", 5, 1)
    with pytest.raises(ModelError, match=r"student outputs \(10,\) but teacher outputs \(5,\)"):
        Distiller(student, teacher, build_terms([{"method": "kd"}]), None, torch.zeros(2, 1, 8, 8))


def test_teacher_checkpoint_with_other_class_count(tmp_path: Path) -> None:
    save_file(create_model("cnn_medium", 5, 1).state_dict(), str(tmp_path / "t.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"do not fit model 'cnn_medium'.*size mismatch for fc\.weight"
    ):
        load_model("cnn_medium", {}, str(tmp_path / "t.safetensors"), 10, 1)
    with pytest.raises(
        CheckpointError, match=r"missing \['stages\.0\.0\.bn\.bias'.*same architecture"
    ):
        load_model("cnn_large", {}, str(tmp_path / "t.safetensors"), 5, 1)


@pytest.mark.parametrize("content", [b"", b"not weights at all", b"\x00" * 64])
def test_unreadable_checkpoints(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "w.safetensors").write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model("cnn_tiny", {}, str(tmp_path / "w.safetensors"), 10, 1)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("cnn_tiny", {}, str(tmp_path / "missing.safetensors"), 10, 1)
    with pytest.raises(CheckpointError, match="model.safetensors' does not exist"):
        load_model("cnn_tiny", {}, str(tmp_path), 10, 1)  # a folder that is no run


def _distill(student_taps: list[str], teacher_taps: list[str]) -> Distiller:
    term = build_terms(
        [{"method": "_test_feature_mse", "student": student_taps, "teacher": teacher_taps}]
    )
    return Distiller(
        create_model("cnn_small", 10, 1),
        create_model("cnn_medium", 10, 1),
        term,
        None,
        torch.zeros(2, 1, 8, 8),
    )


def test_tap_on_a_missing_layer() -> None:
    with pytest.raises(TapError, match=r"student SmallCNN has no module 'stages\.7'.*'stages\.0'"):
        _distill(["stages.7"], ["stages.1"])
    with pytest.raises(TapError, match=r"teacher SmallCNN has no module 'stage\.1'"):
        _distill(["stages.1"], ["stage.1"])
    with pytest.raises(TapError, match="suffix must be ':input' or ':output'"):
        _distill(["fc:inptu"], ["fc:input"])


@pytest.mark.filterwarnings("ignore:Using a target size")  # F.mse_loss warns before failing
def test_incompatible_tap_shapes_for_a_method() -> None:
    term = build_terms([{"method": "_test_self_mse", "student": ["stages.0", "stages.1"]}])
    model = create_model("cnn_small", 10, 1)  # stages.0 16x8x8, stages.1 32x4x4
    distiller = Distiller(model, None, term, None, torch.zeros(2, 1, 8, 8))
    x, y = torch.randn(4, 1, 8, 8), torch.arange(4)
    with pytest.raises(TapError) as info:
        distiller(x, y)
    msg = str(info.value)
    assert "term '_test_self_mse' (method '_test_self_mse') cannot use its inputs" in msg
    assert "'stages.0' (4, 16, 8, 8)" in msg and "'stages.1' (4, 32, 4, 4)" in msg
    assert isinstance(info.value.__cause__, RuntimeError)  # --debug shows torch's error
    distiller = _distill(["stages.1"], ["stages.1", "stages.2"])
    with pytest.raises(TapError, match="1 student taps but 2 teacher taps"):
        distiller(x, y)


# ---------------------------------------------------------------- data


def _bundle(x: Tensor, y: Tensor, classes: int = 10) -> DataBundle:
    return DataBundle(TensorSplit(x, y), None, TensorSplit(x, y), classes, 1, (8, 8))


@pytest.mark.parametrize(
    ("x", "y", "words"),
    [
        (torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 10, 3]), r"labels must lie in \[0, 9\].*10"),
        (torch.zeros(4, 1, 8, 8), torch.tensor([0, -1, 2, 3]), r"\[-1, 3\]"),
        (torch.zeros(4, 1, 8, 8), torch.tensor([0.0, 1, 2, 3]), "labels must be integers"),
        (torch.full((4, 1, 8, 8), float("nan")), torch.arange(4), "256 input values are NaN"),
        (torch.zeros(4, 3, 8, 8), torch.arange(4), r"\(4, 3, 8, 8\), expected 1 channels"),
        (torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.arange(4), "must be floating point"),
    ],
)
def test_bad_data_is_refused_before_training(
    tmp_path: Path, x: Tensor, y: Tensor, words: str
) -> None:
    with pytest.raises(DataError, match=words) as info:
        Trainer(_cfg({}), run_dir=tmp_path, bundle=_bundle(x, y))
    assert "train split" in str(info.value)


def test_split_shapes() -> None:
    with pytest.raises(DataError, match="4 inputs but 3 labels"):
        TensorSplit(torch.zeros(4, 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(DataError, match="labels must be 1-D"):
        TensorSplit(torch.zeros(4, 1), torch.zeros(4, 2, dtype=torch.long))


def test_unknown_dataset() -> None:
    with pytest.raises(RegistryError, match="unknown dataset 'digit'; did you mean 'digits'"):
        build_dataset(_cfg({"data": {"name": "digit"}}).data)


# ---------------------------------------------------------------- the command line


def test_cli_prints_the_error_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: {name: cnn_tiny}\ntrain: {epohcs: 3}\n")
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "kdlab", "train", str(bad)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("kdlab: error: unknown key 'train.epohcs'")
    assert "did you mean 'epochs'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: {name: cnn_tiny}\ntrain: {epochs: 0}\n")
    assert main(["train", str(bad)]) == 2
    assert capsys.readouterr().err.startswith("kdlab: error: key 'train.epochs'")
    with pytest.raises(ConfigError, match="train.epochs"):
        main(["--debug", "train", str(bad)])
    assert main(["train", str(bad), "train.epochs=oops.x=1"]) == 2  # a bad override too


def test_every_error_type_is_a_kdlab_error() -> None:
    for kind in (CheckpointError, ConfigError, DataError, ModelError, RegistryError, TapError):
        assert issubclass(kind, KdlabError)
