"""Batches beyond one image tensor: dicts of named inputs, integer inputs kept as integers.

The models here take keyword inputs (``input_ids``, ``attention_mask``, ``pixel_values``)
as Hugging Face models do; every expected value is computed by calling them directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.config import DataConfig, load_config
from kdlab.data import DataBundle, TensorSplit, build_dataset, make_loader
from kdlab.data.base import check_bundle
from kdlab.distiller import Distiller
from kdlab.engine import train
from kdlab.engine.checkpoint import load_weights
from kdlab.errors import ConfigError, DataError, ModelError
from kdlab.inputs import float_inputs, map_inputs
from kdlab.methods import build_terms
from kdlab.models import MODELS, register_model
from kdlab.views import build_views


class TokenNet(nn.Module):
    """Embeds token ids and mean-pools the positions the mask keeps."""

    def __init__(self, num_classes: int = 3, width: int = 8, vocab: int = 20) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.body = nn.Linear(width, width)
        self.fc = nn.Linear(width, num_classes)
        self.seen: list[tuple[torch.dtype, torch.dtype]] = []

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        self.seen.append((input_ids.dtype, attention_mask.dtype))
        h = torch.tanh(self.body(self.emb(input_ids)))  # (N, L, W): the hidden states
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.fc((h * m).sum(1) / m.sum(1).clamp_min(1.0))


class MixedNet(nn.Module):
    """An image and token ids, both as keywords."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.emb = nn.Embedding(20, 4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, pixel_values: Tensor, input_ids: Tensor) -> Tensor:
        h = self.conv(pixel_values).mean((2, 3)) + self.emb(input_ids).mean(1)
        return self.fc(torch.tanh(h))


class FixedIds(nn.Module):
    """``MixedNet`` on one image tensor, with the token ids held fixed."""

    def __init__(self, model: nn.Module, ids: Tensor) -> None:
        super().__init__()
        self.model, self.ids = model, ids

    def forward(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=x, input_ids=self.ids[: x.shape[0]])


def tokens(n: int = 6, length: int = 5, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 20, (n, length), generator=g)
    lengths = torch.randint(2, length + 1, (n,), generator=g)
    mask = (torch.arange(length) < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def kd_ref(zs: Tensor, zt: Tensor, T: float) -> Tensor:
    return F.kl_div(F.log_softmax(zs / T, 1), F.softmax(zt / T, 1), reduction="batchmean") * T * T


def test_dict_batches_reach_both_models_as_keywords() -> None:
    torch.manual_seed(0)
    student, teacher = TokenNet(width=8), TokenNet(width=12)
    terms = build_terms(
        [
            {"method": "ce", "weight": 0.5},
            {"method": "kd", "weight": 0.5, "T": 2.0},
            {"method": "hidden_mse", "student": ["body"], "teacher": ["body"]},
        ]
    )
    batch, y = tokens(), torch.tensor([0, 1, 2, 0, 1, 2])
    d = Distiller(student, teacher, terms, example_input=batch)
    student.seen.clear()
    out = d(batch, y)
    assert set(student.seen) == {(torch.int64, torch.int64)}  # ids and mask stay integers
    w_h = d.terms["hidden_mse"].maps[0]
    assert tuple(w_h.weight.shape) == (12, 8)  # a map from the student's 8 to the teacher's 12
    with torch.no_grad():
        zs, zt = student(**batch), teacher(**batch)
        hs = student.body(student.emb(batch["input_ids"]))  # the tap: body's output
        ht = teacher.body(teacher.emb(batch["input_ids"]))
    assert out.losses["ce"].item() == pytest.approx(0.5 * F.cross_entropy(zs, y).item(), rel=1e-5)
    assert out.losses["kd"].item() == pytest.approx(0.5 * kd_ref(zs, zt, 2.0).item(), rel=1e-5)
    want = F.mse_loss(w_h(hs), ht).item()
    assert out.losses["hidden_mse"].item() == pytest.approx(want, rel=1e-5)
    # The mask reaches the models: ids under it do not change the logits.
    changed = dict(batch, input_ids=batch["input_ids"] + 7 * (1 - batch["attention_mask"]))
    assert d(changed, y).losses["kd"].item() == pytest.approx(out.losses["kd"].item(), rel=1e-6)


def test_loader_batches_are_dicts_with_their_rows() -> None:
    batch = tokens(n=10)
    split = TensorSplit(batch, torch.arange(10) % 3)
    loader = make_loader(split, 4, train=True, seed=3)
    loader.set_epoch(1)
    seen = []
    for x, y, idx in loader:
        assert set(x) == {"input_ids", "attention_mask"} and x["input_ids"].dtype == torch.int64
        assert torch.equal(x["input_ids"], batch["input_ids"][idx])
        assert torch.equal(x["attention_mask"], batch["attention_mask"][idx])
        assert torch.equal(y, idx % 3)
        seen += idx.tolist()
    assert len(seen) == 8 and len(set(seen)) == 8  # two full batches, the last partial dropped
    assert torch.equal(split.subset([2, 5]).x["input_ids"], batch["input_ids"][[2, 5]])
    with pytest.raises(DataError, match="6 'attention_mask' rows but 10 labels"):
        TensorSplit({**batch, "attention_mask": batch["attention_mask"][:6]}, torch.zeros(10))


@pytest.fixture
def token_bundle() -> DataBundle:
    def split(n: int, seed: int) -> TensorSplit:
        x = tokens(n=n, length=6, seed=seed)
        # a learnable rule: the class is the first token mod 3
        return TensorSplit(x, x["input_ids"][:, 0] % 3)

    return DataBundle(split(48, 0), split(12, 1), split(12, 2), 3, 1, (6,), name="toy")


def _recipe(tmp_path: Path, name: str, **train: object) -> object:
    if "test_token_net" not in MODELS:
        register_model("test_token_net")(lambda num_classes, in_channels=1, width=8: TokenNet(
            num_classes, width
        ))
    return load_config(
        {
            "name": name,
            "output_dir": str(tmp_path),
            "data": {"batch_size": 8, "eval_batch_size": 5},
            "student": {"name": "test_token_net"},
            "teacher": {"name": "test_token_net", "kwargs": {"width": 12}},
            "distill": {
                "terms": [
                    {"method": "ce"},
                    {"method": "kd"},
                    {"method": "hidden_mse", "student": "body", "teacher": "body"},
                ]
            },
            "train": {"epochs": 2, "progress": False, "threads": 1, **train},
        }
    )


def test_the_engine_trains_and_scores_dict_batches(
    tmp_path: Path, token_bundle: DataBundle
) -> None:
    result = train(_recipe(tmp_path, "plain"), tmp_path / "plain", bundle=token_bundle)
    student = TokenNet(3, 8)
    student.load_state_dict(load_weights(tmp_path / "plain" / "last.safetensors"))
    student.eval()
    test = token_bundle.test
    with torch.no_grad():
        logits = student(**test.x)
    acc = 100.0 * float((logits.argmax(1) == test.y).float().mean())
    assert result.test_last["acc1"] == pytest.approx(acc)
    assert result.test_last["loss"] == pytest.approx(F.cross_entropy(logits, test.y).item(), 1e-5)
    # The teacher cache is exact without augmentation: the same weights, dict batches too.
    cached = _recipe(tmp_path, "cached", cache_teacher=True)
    train(cached, tmp_path / "cached", bundle=token_bundle)
    a = load_weights(tmp_path / "plain" / "last.safetensors")
    b = load_weights(tmp_path / "cached" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_data_check_accepts_token_ids_and_names_bad_inputs() -> None:
    x = tokens()
    y = torch.zeros(6, dtype=torch.long)
    ok = TensorSplit(x, y)
    check_bundle(DataBundle(ok, None, ok, 3, 1, (5,)))
    plain_ids = TensorSplit(x["input_ids"], y)  # one integer tensor: token ids alone
    check_bundle(DataBundle(plain_ids, None, plain_ids, 3, 1, (5,)))
    bad = TensorSplit({**x, "input_ids": x["input_ids"] - 5}, y)
    with pytest.raises(DataError, match=r"\(train split\), input 'input_ids': token ids must be"):
        check_bundle(DataBundle(bad, None, ok, 3, 1, (5,)), "toy")
    nan = TensorSplit({**x, "scores": torch.full((6, 5), float("nan"))}, y)
    with pytest.raises(DataError, match=r"\(test split\), input 'scores': 30 input values are NaN"):
        check_bundle(DataBundle(ok, None, nan, 3, 1, (5,)), "toy")
    raw = TensorSplit(torch.zeros(6, 1, 4, 4, dtype=torch.uint8), y)
    with pytest.raises(DataError, match=r"uint8 \(6, 1, 4, 4\) \(images and sequences must be"):
        check_bundle(DataBundle(raw, None, raw, 3, 1, (4, 4)))


def test_ids_beyond_the_vocabulary_are_a_model_error() -> None:
    x = tokens()
    x["input_ids"][0, 0] = 25  # TokenNet's vocabulary has 20 ids
    with pytest.raises(ModelError, match=r"TokenNet cannot take this batch \(input_ids int64"):
        Distiller(TokenNet(), TokenNet(), build_terms([{"method": "kd"}]), example_input=x)


# ------------------------------------------------------------------ views and the Jacobian


def test_views_refuse_integer_inputs_naming_the_view_and_the_input() -> None:
    x = tokens()
    for spec in ({"type": "gaussian_noise"}, {"type": "quantize"}, {"type": "additive_noise"}):
        views = build_views({"noisy": spec})
        terms = build_terms([{"method": "kd", "student_view": "noisy"}])
        who = rf"distill.views.noisy \({spec['type']}\) transforms floating-point inputs"
        with pytest.raises(ConfigError, match=who + r".*only integer ones \(input_ids int64"):
            Distiller(TokenNet(), TokenNet(), terms, views, example_input=x)
        with pytest.raises(ConfigError, match=who + r".*\(input int64 \(6, 5\)\)"):
            views["noisy"](x["input_ids"])  # one plain tensor of ids: the same refusal
    declared = build_views({"v": {"type": "gaussian_noise", "input": "input_ids"}})["v"]
    with pytest.raises(ConfigError, match="input 'input_ids' is int64 .token ids or a mask"):
        declared(x)
    typo = build_views({"v": {"type": "gaussian_noise", "input": ["pixels"]}})["v"]
    with pytest.raises(ConfigError, match="its input 'pixels' is not in the batch"):
        typo({"pixel_values": torch.zeros(2, 1, 3, 3), "input_ids": x["input_ids"][:2]})
    bad_view = {"v": {"type": "hflip", "input": 3}}
    with pytest.raises(ConfigError, match="'input' names the batch inputs"):
        load_config({"student": {"name": "cnn_tiny"}, "distill": {"views": bad_view}})


def test_a_view_transforms_only_the_input_it_declares() -> None:
    ids = tokens()["input_ids"]
    px = torch.randn(6, 1, 4, 4)
    view = build_views({"v": {"type": "gaussian_noise", "sigma": 0.5, "input": "pixel_values"}})
    torch.manual_seed(7)
    out = view["v"]({"pixel_values": px, "input_ids": ids})
    torch.manual_seed(7)
    assert torch.equal(out["pixel_values"], px + 0.5 * torch.randn_like(px))
    assert out["input_ids"] is ids
    # Undeclared: every float input, and only those.
    assert float_inputs({"a": px, "b": ids, "c": px.double()}, None, "x") == ["a", "c"]
    same = map_inputs({"a": px, "b": ids}, lambda t: t + 1, ["b"])
    assert same["a"] is px and torch.equal(same["b"], ids + 1)


def test_jacobian_declares_its_input_and_refuses_token_ids() -> None:
    torch.manual_seed(0)
    s, t = MixedNet(), MixedNet()
    ids = tokens()["input_ids"]
    px = torch.randn(6, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    on_ids = build_terms([{"method": "jacobian"}])
    with pytest.raises(ConfigError, match=r"term 'jacobian' \(method 'jacobian'\) differentiates"):
        Distiller(TokenNet(), TokenNet(), on_ids, example_input=tokens())
    declared = build_terms([{"method": "jacobian", "input": "input_ids"}])
    with pytest.raises(ConfigError, match="input 'input_ids' is int64"):
        Distiller(s, t, declared, example_input={"pixel_values": px, "input_ids": ids})
    # On pixel_values of a dict batch: the loss of the same models fed that tensor alone.
    terms = build_terms([{"method": "jacobian", "input": "pixel_values"}])
    batch = {"pixel_values": px, "input_ids": ids}
    got = Distiller(s, t, terms, example_input=batch)(batch, y).losses["jacobian"]
    ref_terms = build_terms([{"method": "jacobian"}])
    ref = Distiller(FixedIds(s, ids), FixedIds(t, ids), ref_terms, example_input=px)
    want = ref(px, y).losses["jacobian"]
    assert got.item() == pytest.approx(want.item(), rel=1e-6) and got.item() > 0
    assert got.requires_grad


def test_token_npz_errors(tmp_path: Path) -> None:
    ids = np.ones((6, 4), dtype=np.int64)
    np.savez(tmp_path / "a.npz", input_ids=ids, y=np.arange(6) % 2, input_ids_test=ids)
    with pytest.raises(DataError, match=r"expected \['input_ids_test', 'y_test'\]"):
        build_dataset(DataConfig(name="npz", root=str(tmp_path / "a.npz")))
    np.savez(tmp_path / "b.npz", input_ids=ids[..., None], y=np.arange(6) % 2)
    with pytest.raises(DataError, match=r"b.npz\[input_ids\]: token ids and masks must be 2-D"):
        build_dataset(DataConfig(name="npz", root=str(tmp_path / "b.npz")))
    np.savez(tmp_path / "c.npz", input_ids=ids, y=np.arange(6) % 2)
    ncl = DataConfig(name="npz", root=str(tmp_path / "c.npz"), options={"layout": "ncl"})
    with pytest.raises(DataError, match="layout applies to an array x"):
        build_dataset(ncl)
    bundle = build_dataset(DataConfig(name="npz", root=str(tmp_path / "c.npz")))
    assert bundle.train.x["input_ids"].dtype == torch.int64
    assert bundle.extra["inputs"] == ["input_ids"]
