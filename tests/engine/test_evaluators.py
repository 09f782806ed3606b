"""Evaluators: hand-computed values, one file per metric, selection on any of them,
reduction over ranks equal to one process."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kdlab.config import EvaluatorParams, load_recipe
from kdlab.data import TensorSplit, make_loader
from kdlab.engine import train
from kdlab.engine.evaluators import EVALUATORS, Evaluator
from kdlab.engine.evaluators.accuracy import Accuracy
from kdlab.engine.evaluators.retrieval import Retrieval
from kdlab.rundir import RunDir

# logits of 5 samples over 3 classes, and their labels
LOGITS = torch.tensor(
    [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0], [0.5, 0.2, 0.1], [0.0, 0.2, 1.0]]
)
LABELS = torch.tensor([0, 2, 2, 1, 0])


def _loader(split: TensorSplit, batch: int = 2) -> Any:
    return make_loader(split, batch, train=False)


def test_accuracy_against_hand_values() -> None:
    # top-1: samples 0 and 2 are right (2 of 5); top-2: also 1 (2nd: class 2) and
    # 3 (2nd: class 1) -> 4 of 5; loss: mean of logsumexp(z) - z_y, by hand.
    ev = Accuracy(topk=[1, 2, 5])
    got = ev.evaluate(nn.Identity(), _loader(TensorSplit(LOGITS, LABELS)))
    nll = [
        math.log(sum(math.exp(v) for v in row)) - row[y]
        for row, y in zip(LOGITS.tolist(), LABELS.tolist())
    ]
    assert got["acc1"] == pytest.approx(40.0)
    assert got["acc2"] == pytest.approx(80.0)
    assert got["acc5"] == pytest.approx(100.0)  # k above the class count: every class
    assert got["loss"] == pytest.approx(sum(nll) / 5, rel=1e-6)
    assert Accuracy.metric_names(ev.params) == ["acc1", "acc2", "acc5", "loss"]


def test_retrieval_against_hand_values() -> None:
    # Unit vectors at 0, 10, 90, 100 degrees, labels a, b, a, b (distance grows with the
    # angle between them). Nearest other point: 0->10, 10->0, 90->100, 100->90, always
    # the other label: recall@1 = 0. Two nearest: 0->{10, 90} hit, 10->{0, 90} miss,
    # 90->{100, 10} miss, 100->{90, 10} hit: recall@2 = 50%.
    ang = torch.tensor([0.0, 10.0, 90.0, 100.0]) * math.pi / 180
    emb = torch.stack([ang.cos(), ang.sin()], 1)
    y = torch.tensor([0, 1, 0, 1])
    got = Retrieval(ks=[1, 2]).evaluate(nn.Identity(), _loader(TensorSplit(emb, y), batch=3))
    assert got == {"recall@1": 0.0, "recall@2": 50.0}


class _Constant(Evaluator):
    """A newcomer's evaluator: everything it takes is this class (one file)."""

    name = "_test_half_acc"
    Params = EvaluatorParams
    default_select = "half"

    @classmethod
    def metric_names(cls, params: EvaluatorParams) -> list[str]:
        return ["half"]

    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        return {"half": Accuracy(topk=[1]).evaluate(model, loader)["acc1"] / 2}


def _tiny(tmp: Path, *over: str) -> Any:
    data = {
        "name": "ev",
        "output_dir": str(tmp),
        "student": {"name": "cnn_tiny"},
        "data": {"per_class": 8, "batch_size": 40},
        "train": {"epochs": 3, "progress": False, "threads": 1, "optimizer": {"lr": 0.2}},
    }
    return load_recipe(data, list(over))


def test_a_registered_evaluator_is_named_by_the_recipe(tmp_path: Path) -> None:
    assert EVALUATORS.get("_test_half_acc") is _Constant
    res = train(_tiny(tmp_path, "train.evaluator=_test_half_acc"))
    rows = RunDir(res.run_dir).read_metrics()
    assert all(set(r) >= {"val_half"} and "val_acc1" not in r for r in rows)
    assert res.select == "half" and res.test_best == {"half": pytest.approx(res.test_score_best)}
    assert res.best_epoch == max(rows, key=lambda r: r["val_half"])["epoch"]


def test_selection_on_a_metric_to_minimise(tmp_path: Path) -> None:
    res = train(_tiny(tmp_path, "train.select=loss"))
    rows = RunDir(res.run_dir).read_metrics()
    assert (res.select, res.mode) == ("loss", "min")
    assert res.best_epoch == min(rows, key=lambda r: r["val_loss"])["epoch"]
    saved = RunDir(res.run_dir).read_results()
    assert saved["val_score"] == min(r["val_loss"] for r in rows)
    assert saved["test_acc_best"] == res.test_best["acc1"]  # the flat keys stay


def test_retrieval_selects_on_recall(tmp_path: Path) -> None:
    cfg = load_recipe(
        "digits/triplet",
        [
            f"output_dir={tmp_path}",
            "train.epochs=2",
            "train.progress=false",
            "train.threads=1",
            "train.evaluator=retrieval",
            "data.batch_size=128",
        ],
    )
    res = train(cfg)
    rows = RunDir(res.run_dir).read_metrics()
    assert res.select == "recall@1" and res.mode == "max"
    assert res.best_epoch == max(rows, key=lambda r: r["val_recall@1"])["epoch"]
    assert 0.0 <= res.test_best["recall@1"] <= res.test_best["recall@5"] <= 100.0


def _sharded(rank: int, out: str) -> None:
    # Each of 2 gloo ranks scores its (uneven) shard: 5 samples -> 3 + 2.
    import ignite.distributed as idist  # noqa: PLC0415

    split_acc = TensorSplit(LOGITS, LABELS)
    ang = torch.arange(5.0)
    split_ret = TensorSplit(torch.stack([ang.cos(), ang.sin()], 1), torch.tensor([0, 1, 0, 1, 1]))
    kw = {"train": False, "rank": idist.get_rank(), "world_size": idist.get_world_size()}
    acc = Accuracy().evaluate(nn.Identity(), make_loader(split_acc, 2, **kw))
    ret = Retrieval(ks=[1, 2]).evaluate(nn.Identity(), make_loader(split_ret, 2, **kw))
    if idist.get_rank() == 0:
        torch.save({"acc": acc, "ret": ret}, out)


@pytest.mark.slow
def test_two_ranks_reduce_to_one_process(tmp_path: Path) -> None:
    from kdlab.engine.distributed import free_port, launch  # noqa: PLC0415

    out = tmp_path / "sharded.pt"
    launch(_sharded, str(out), nproc=2, device="cpu", master_port=free_port())
    got = torch.load(out, weights_only=True)
    ang = torch.arange(5.0)
    ref_ret = Retrieval(ks=[1, 2]).evaluate(
        nn.Identity(),
        _loader(TensorSplit(torch.stack([ang.cos(), ang.sin()], 1), torch.tensor([0, 1, 0, 1, 1]))),
    )
    ref_acc = Accuracy().evaluate(nn.Identity(), _loader(TensorSplit(LOGITS, LABELS)))
    assert got["ret"] == ref_ret
    assert got["acc"]["acc1"] == ref_acc["acc1"] and got["acc"]["acc5"] == ref_acc["acc5"]
    assert got["acc"]["loss"] == pytest.approx(ref_acc["loss"], rel=1e-6)
