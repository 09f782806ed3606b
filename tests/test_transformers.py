"""Transformers: hf: models, hidden-state and attention taps, their losses, no network.

The models are two tiny random-init ``BertForSequenceClassification`` (2 layers, hidden
32 and 16) from ``BertConfig`` (the ``hf`` extra; skipped without it). The losses' golden
values: test_functional_transformer.py.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdlab import Distiller, build_terms
from kdlab.errors import ModelError, TapError
from kdlab.models import create_model
from kdlab.taps import FeatureTaps, Tap

# ------------------------------------------------------------------- tiny BERT pairs

transformers = pytest.importorskip("transformers")
if not transformers.utils.is_torch_available():  # transformers 5 needs torch >= 2.6
    pytest.skip(f"transformers cannot use torch {torch.__version__}", allow_module_level=True)

TEACHER = dict(
    vocab_size=50,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=16,
    attention_probs_dropout_prob=0.0,  # attention taps must hold probabilities
)
STUDENT = {**TEACHER, "hidden_size": 16, "intermediate_size": 32}


def _bert(cfg: dict, num_labels: int = 3) -> torch.nn.Module:
    config = transformers.BertConfig(**cfg, num_labels=num_labels)
    config._attn_implementation = "eager"
    return transformers.BertForSequenceClassification(config)


def test_taps_capture_hidden_states_and_attention_probabilities() -> None:
    torch.manual_seed(0)
    model = _bert(TEACHER).eval()
    taps = FeatureTaps(
        model,
        [
            "bert.embeddings",
            "bert.encoder.layer.1",
            "bert.encoder.layer.0.attention.self:output.1",
            "classifier:input",
        ],
    )
    ids = torch.randint(0, 50, (2, 7))
    out = model(ids, output_hidden_states=True, output_attentions=True)
    get = taps.get
    # Hugging Face's own outputs: hidden_states[0] is the embeddings, [k + 1] layer k.
    assert torch.equal(get(Tap("bert.embeddings")), out.hidden_states[0])
    assert torch.equal(get(Tap("bert.encoder.layer.1")), out.hidden_states[2])
    attn = get(Tap.parse("bert.encoder.layer.0.attention.self:output.1"))
    assert attn.shape == (2, 2, 7, 7) and torch.equal(attn, out.attentions[0])
    assert torch.allclose(attn.sum(-1), torch.ones(2, 2, 7), atol=1e-6)
    assert get(Tap("classifier", "input")).shape == (2, 32)
    assert str(Tap.parse("a.b:output.1")) == "a.b:output.1"
    with pytest.raises(TapError, match="element index"):
        Tap.parse("a:output.x")


def test_distiller_kd_hidden_and_attention_terms_on_input_ids() -> None:
    torch.manual_seed(0)
    student, teacher = _bert(STUDENT), _bert(TEACHER)
    seen_dtypes: list[torch.dtype] = []
    student.register_forward_pre_hook(lambda _m, args: seen_dtypes.append(args[0].dtype))
    terms = build_terms(
        [
            {"method": "ce", "weight": 0.1},
            {"method": "kd", "weight": 0.9},
            {
                "method": "hidden_mse",
                "student": ["bert.embeddings", "bert.encoder.layer.1"],
                "teacher": ["bert.embeddings", "bert.encoder.layer.1"],
            },
            {
                "method": "attention_kl",
                "student": ["bert.encoder.layer.1.attention.self:output.1"],
                "teacher": ["bert.encoder.layer.1.attention.self:output.1"],
            },
        ]
    )
    ids = torch.randint(0, 50, (4, 8))  # a LongTensor batch of token ids
    labels = torch.tensor([0, 1, 2, 0])
    distiller = Distiller(student, teacher, terms, example_input=ids).train()
    out = distiller(ids, labels)
    assert set(seen_dtypes) == {torch.int64}  # integer inputs reach the model unchanged
    assert set(out.losses) == {"ce", "kd", "hidden_mse", "attention_kl"}
    # hidden_mse: one shared Linear(16 -> 32) (TinyBERT's W_h), recomputed independently.
    w_h = distiller.terms["hidden_mse"].maps
    assert len(w_h) == 1 and tuple(w_h[0].weight.shape) == (32, 16)
    s_taps = FeatureTaps(student, ["bert.embeddings", "bert.encoder.layer.1"])
    t_taps = FeatureTaps(teacher, ["bert.embeddings", "bert.encoder.layer.1"])
    student.eval()  # dropout off, so the reference forward is deterministic
    distiller.eval()
    out = distiller(ids, labels)
    with torch.no_grad():
        student(ids)
        teacher(ids)
        ref = sum(
            F.mse_loss(w_h[0](s_taps.get(Tap(p))), t_taps.get(Tap(p)))
            for p in ("bert.embeddings", "bert.encoder.layer.1")
        )
    assert out.losses["hidden_mse"].item() == pytest.approx(ref.item(), rel=1e-5)
    assert out.losses["attention_kl"].item() > 0
    distiller.train()
    out = distiller(ids, labels)
    out.total.backward()
    emb = student.bert.embeddings.word_embeddings.weight
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert w_h[0].weight.grad is not None and w_h[0].weight.grad.abs().sum() > 0


def test_attention_terms_refuse_dropped_out_weights_and_other_shapes() -> None:
    torch.manual_seed(0)
    tap = "bert.encoder.layer.0.attention.self:output.1"
    dropping = _bert({**STUDENT, "attention_probs_dropout_prob": 0.5})
    terms = build_terms([{"method": "attention_kl", "student": [tap], "teacher": [tap]}])
    ids = torch.randint(0, 50, (2, 6))
    distiller = Distiller(dropping, _bert(TEACHER), terms, example_input=ids).train()
    with pytest.raises(TapError, match="attention_probs_dropout_prob: 0"):
        distiller(ids, torch.tensor([0, 1]))
    four_heads = _bert({**TEACHER, "num_attention_heads": 4})
    with pytest.raises(TapError, match="average_heads: true"):
        Distiller(_bert(STUDENT), four_heads, terms, example_input=ids)
    averaged = build_terms(
        [{"method": "attention_kl", "student": [tap], "teacher": [tap], "average_heads": True}]
    )
    d = Distiller(_bert(STUDENT), four_heads, averaged, example_input=ids).eval()
    assert torch.isfinite(d(ids, torch.tensor([0, 1])).total)
    hidden = build_terms(
        [{"method": "hidden_cosine", "student": "bert.encoder.layer.0", "teacher": tap}]
    )
    with pytest.raises(TapError, match=r"hidden states \(N, L, H\)"):
        Distiller(_bert(STUDENT), _bert(TEACHER), hidden, example_input=ids)


def test_hf_models_build_from_local_files_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    torch.manual_seed(0)
    # 1. a model type with config kwargs
    by_type = create_model("hf:bert", num_classes=3, config=TEACHER)
    assert by_type.config.hidden_size == 32 and by_type.config.num_labels == 3
    # 2. a config.json file, 3. a save_pretrained folder (weights kept exactly)
    by_type.config.to_json_file(tmp_path / "tiny.json")
    by_file = create_model(f"hf:{tmp_path / 'tiny.json'}", num_classes=3)
    assert by_file.config.num_hidden_layers == 2
    by_type.save_pretrained(tmp_path / "saved")
    by_folder = create_model(f"hf:{tmp_path / 'saved'}", num_classes=3)
    ids = torch.randint(0, 50, (2, 5))
    with torch.no_grad():
        # create_model's models return the logits (found by name in the ModelOutput)
        logits = by_folder.eval()(ids)
        assert logits.shape == (2, 3) and torch.equal(logits, by_type.eval()(ids))
    # never a download: a hub id is an error, as is a folder without safetensors
    with pytest.raises(ModelError, match="never downloads"):
        create_model("hf:bert-base-uncased", num_classes=3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no safetensors weights"):
        create_model(f"hf:{tmp_path / 'empty'}", num_classes=3)
    with pytest.raises(ModelError, match="unknown task"):
        create_model("hf:bert", num_classes=3, config=TEACHER, task="translation")
    assert attempts == []


def test_missing_transformers_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if absent
    with pytest.raises(ModelError, match=r"pip install 'kdlab\[hf\]'"):
        create_model("hf:bert", num_classes=3)
