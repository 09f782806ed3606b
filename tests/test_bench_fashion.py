"""The Fashion-MNIST protocols: every method resolves on both pairs; fashion-ci end to end."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from kdlab.bench import expand, load_protocol
from kdlab.bench.report import mean_interval
from kdlab.cli import main
from kdlab.config import read_yaml
from kdlab.data.idx import FASHION_MNIST_ROOT
from kdlab.distiller import Distiller
from kdlab.engine.stages import resolve_stages
from kdlab.methods import METHODS, build_terms
from kdlab.models import create_model
from kdlab.views import build_views

ROOT = Path(__file__).resolve().parents[1]
# Methods evaluated by their own protocols, not by a classification table.
NOT_CLASSIFIERS = {"ce", "cqd", "darkrank", "triplet"}
# Transformer methods (hidden states, attention) are checked on tiny BERT pairs instead.
NOT_CLASSIFIERS |= {"attention_kl", "hidden_cosine", "hidden_mse"}
HAVE_FASHION = Path(FASHION_MNIST_ROOT, "train-images-idx3-ubyte.gz").is_file()


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the protocols name configs/fashion relative to the repository


def test_fashion_protocol_covers_every_classification_method() -> None:
    proto = load_protocol("fashion")
    shipped = {m for m in METHODS if not m.startswith("_")}  # other tests register _test_*
    assert set(proto.methods) == (shipped - NOT_CLASSIFIERS) | {"noisy_kd"}
    assert len(proto.spec.seeds) >= 3 and len(proto.spec.pairs) == 2
    # one source of truth: each method is its recipe's distill section, unchanged
    for name, distill in proto.methods.items():
        assert distill == read_yaml(ROOT / "configs" / "fashion" / f"{name}.yaml")["distill"]


@pytest.mark.parametrize("pair", ["cnn3-cnn_tiny", "resnet8-cnn_tiny"])
def test_fashion_runs_build_on_both_pairs(pair: str, tmp_path: Path) -> None:
    """Every (pair, method) builds: taps exist, shapes fit, pre-stages resolve."""
    proto = load_protocol("fashion", seeds=[0])
    runs = [r for r in expand(proto, tmp_path) if r.pair == pair and r.kind == "method"]
    assert len(runs) == len(proto.methods)
    torch.manual_seed(0)
    teacher_cfg = runs[0].cfg.teacher
    assert teacher_cfg is not None
    teacher = create_model(teacher_cfg.name, 10, 1, **teacher_cfg.kwargs)
    for run in runs:
        student = create_model(run.cfg.student.name, 10, 1)
        terms = build_terms(run.cfg.distill.terms)
        views = build_views(run.cfg.distill.views)
        d = Distiller(student, teacher, terms, views, example_input=torch.zeros(2, 1, 28, 28))
        stages = resolve_stages(run.cfg, d)
        # pre-stages at their default length: 1/8 of the 8 main epochs
        assert [s.epochs for s in stages if not s.is_main] in ([], [1]), run.label
        assert stages[-1].epochs == proto.spec.epochs


def test_pre_stage_length_follows_main_epochs_unless_fixed(tmp_path: Path) -> None:
    proto = load_protocol("fashion", methods=["ft", "fitnet"], seeds=[0])
    runs = {r.method: r for r in expand(proto, tmp_path) if r.pair == "cnn3-cnn_tiny"}
    teacher = create_model("cnn", 10, 1, widths=[16, 32, 64])
    for method, want in (("ft", 5), ("fitnet", 5)):
        cfg = runs[method].cfg.model_copy(deep=True)
        cfg.train.epochs = 40
        d = Distiller(
            create_model("cnn_tiny", 10, 1),
            teacher,
            build_terms(cfg.distill.terms),
            example_input=torch.zeros(2, 1, 28, 28),
        )
        assert [s.epochs for s in resolve_stages(cfg, d)] == [want, 40]
    fixed = [{**t, "paraphraser_epochs": 3} if t["method"] == "ft" else t
             for t in runs["ft"].cfg.distill.terms]
    d = Distiller(
        create_model("cnn_tiny", 10, 1),
        teacher,
        build_terms(fixed),
        example_input=torch.zeros(2, 1, 28, 28),
    )
    assert [s.epochs for s in resolve_stages(runs["ft"].cfg, d)] == [3, 8]


def test_gain_interval_is_the_student_t_interval() -> None:
    lo, hi = mean_interval([1.0, 2.0, 3.0])  # type: ignore[misc]
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) * s / sqrt(n), s = 1
    assert lo == pytest.approx(2.0 - half) and hi == pytest.approx(2.0 + half)
    assert mean_interval([1.0]) is None


@pytest.mark.skipif(not HAVE_FASHION, reason=f"Fashion-MNIST not in {FASHION_MNIST_ROOT}")
def test_fashion_ci_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "fashion-ci"
    code = main(["bench", "fashion-ci", "--out", str(out), "--no-progress", "--no-plots"])
    assert code == 0
    with open(out / "report" / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    got = sorted(r["method"] for r in rows)
    assert got == sorted(["teacher", "vanilla", "kd", "at", "fitnet"])
    van = next(float(r["test_acc_best"]) for r in rows if r["method"] == "vanilla")
    for r in rows:
        assert 0.0 < float(r["test_acc_best"]) <= 100.0 and float(r["wall_time_s"]) > 0
        if r["kind"] == "method":
            assert float(r["gain_best"]) == pytest.approx(float(r["test_acc_best"]) - van)
    table = (out / "report" / "table.md").read_text()
    assert "gain 95% CI" in table and "time/run (s)" in table and "| fitnet " in table
