"""Text data and a tiny BERT pair from the command line (the ``hf`` extra; ``text`` for files).

The pair is two random-init ``BertForSequenceClassification`` from ``BertConfig``, saved
with ``save_pretrained`` and named as local ``hf:`` folders; the data are token ids in an
``.npz`` file, or text in parquet / csv / json files read through Hugging Face
``datasets`` and tokenised with a tokenizer folder built here from a 16-word vocabulary.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlab import cli
from kdlab.config import DataConfig
from kdlab.data import build_dataset
from kdlab.engine.checkpoint import load_weights
from kdlab.errors import DataError
from kdlab.models import create_model

transformers = pytest.importorskip("transformers")
if not transformers.utils.is_torch_available():  # transformers 5 needs torch >= 2.6
    pytest.skip(f"transformers cannot use torch {torch.__version__}", allow_module_level=True)

TEACHER = dict(
    vocab_size=16,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
    attention_probs_dropout_prob=0.0,  # attention taps must hold probabilities
)
STUDENT = {**TEACHER, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1}
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "great", "awful"]
WORDS += ["movie", "film", "a", "the", "is", "very", "not"]


def _no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Saved student and teacher folders (the student's with a tokenizer beside it)."""
    root = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    out = {}
    for role, cfg in (("student", STUDENT), ("teacher", TEACHER)):
        config = transformers.BertConfig(**cfg, num_labels=2)
        transformers.BertForSequenceClassification(config).save_pretrained(root / role)
        out[role] = root / role
    vocab = {w: i for i, w in enumerate(WORDS)}
    transformers.BertTokenizer(vocab=vocab).save_pretrained(root / "student")
    return out


def _token_file(path: Path, n: int = 48, n_test: int = 16, length: int = 8) -> Path:
    """Token ids whose class is whether 'good' (id 5) occurs before the padding."""
    rng = np.random.default_rng(0)

    def rows(m: int) -> dict[str, np.ndarray]:
        ids = rng.integers(5, 16, size=(m, length))
        lengths = rng.integers(3, length + 1, size=m)
        mask = (np.arange(length) < lengths[:, None]).astype(np.int64)
        ids = np.where(mask == 1, ids, 0)
        ids[:, 0] = 2  # [CLS]
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(ids),
            "y": ((ids == 5) & (mask == 1)).any(1).astype(np.int64),
        }

    train, test = rows(n), rows(n_test)
    np.savez(path, **train, **{f"{k}_test": v for k, v in test.items()})
    return path


def test_a_tiny_bert_pair_trains_kd_and_feature_terms_from_the_cli_and_exports(
    pair: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts = _no_network(monkeypatch)
    data = _token_file(tmp_path / "tokens.npz")
    layer = "bert.encoder.layer"
    recipe = tmp_path / "bert.yaml"
    recipe.write_text(
        f"data: {{name: npz, root: {data}, batch_size: 8, eval_batch_size: 16}}\n"
        f"student: {{name: 'hf:{pair['student']}'}}\n"
        f"teacher: {{name: 'hf:{pair['teacher']}'}}\n"
        "distill:\n"
        "  terms:\n"
        "    - {method: ce, weight: 0.1}\n"
        "    - {method: kd, weight: 0.9}\n"
        f"    - {{method: hidden_mse, student: [bert.embeddings, {layer}.0],\n"
        f"       teacher: [bert.embeddings, {layer}.1]}}\n"
        f"    - {{method: attention_kl, student: [{layer}.0.attention.self:output.1],\n"
        f"       teacher: [{layer}.1.attention.self:output.1]}}\n"
        "train: {epochs: 2, progress: false, threads: 1, precision: fp32,\n"
        "       optimizer: {name: adamw, lr: 0.001}}\n"
    )
    run = tmp_path / "run"
    assert cli.main(["train", str(recipe), "--run-dir", str(run)]) == 0
    capsys.readouterr()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["train_kd"] > 0 and r["train_hidden_mse"] > 0 for r in rows)
    assert all(r["train_attention_kl"] > 0 for r in rows)
    # The reported test accuracy is the saved student's, recomputed here with HF's own call.
    student = create_model(f"hf:{pair['student']}", num_classes=2)
    student.load_state_dict(load_weights(run / "model.safetensors"))
    arrays = np.load(data)
    x = {k: torch.from_numpy(arrays[f"{k}_test"]) for k in ("input_ids", "attention_mask")}
    x["token_type_ids"] = torch.from_numpy(arrays["token_type_ids_test"])
    with torch.no_grad():
        logits = student.eval()(**x)
    acc = 100.0 * float((logits.argmax(1) == torch.from_numpy(arrays["y_test"])).float().mean())
    assert json.loads((run / "results.json").read_text())["test_acc_best"] == pytest.approx(acc)

    # Export: one graph input per key, dynamic batch and sequence axes, onnxruntime agrees.
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "student.onnx"
    assert cli.main(["export", str(run), "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input.input_ids"] == ["batch", 8] and report["input.input_ids_dtype"] == "int64"
    assert report["onnxruntime_max_abs_diff"] < 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [
        "input_ids", "attention_mask", "token_type_ids"
    ]
    short = {k: v[:5, :6].contiguous() for k, v in x.items()}  # other batch and length
    got = session.run(None, {k: v.numpy() for k, v in short.items()})[0]
    with torch.no_grad():
        want = student(**short)
    assert np.abs(got - want.numpy()).max() < 1e-4
    assert attempts == []


# ------------------------------------------------------------------ text files


def _rows() -> list[dict[str, object]]:
    texts = ["a good movie", "the film is awful", "a very good film", "not a great movie",
             "the movie is bad", "a great film", "awful", "good good good"]
    labels = ["pos", "neg", "pos", "neg", "neg", "pos", "neg", "pos"]
    return [{"text": t, "label": lab} for t, lab in zip(texts * 3, labels * 3)]


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    if path.suffix == ".parquet":
        import pyarrow as pa  # noqa: PLC0415 - comes with datasets
        import pyarrow.parquet as pq  # noqa: PLC0415

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".csv":
        import csv  # noqa: PLC0415

        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_text_files_are_tokenised_locally_without_network(
    suffix: str, pair: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("datasets")
    attempts = _no_network(monkeypatch)
    folder = tmp_path / "data"
    folder.mkdir()
    rows = _rows()
    _write(folder / f"train{suffix}", rows)
    _write(folder / f"test{suffix}", rows[:8])
    cfg = DataConfig(
        name="text",
        root=str(folder),
        val_fraction=0.25,
        options={"tokenizer": f"hf:{pair['student']}", "label_map": ["neg", "pos"]},
    )
    bundle = build_dataset(cfg)
    tok = transformers.AutoTokenizer.from_pretrained(str(pair["student"]), local_files_only=True)
    want = tok([r["text"] for r in rows[:8]], padding="max_length", max_length=6)
    test = bundle.test.x
    assert set(test) == {"input_ids", "token_type_ids", "attention_mask"}
    assert test["input_ids"].dtype == torch.int64 and test["input_ids"].shape == (8, 6)
    assert test["input_ids"].tolist() == want["input_ids"]  # longest: "not a great movie" + 2
    assert test["attention_mask"].tolist() == want["attention_mask"]
    assert bundle.test.y.tolist() == [1, 0, 1, 0, 0, 1, 0, 1]
    assert len(bundle.train) == 18 and len(bundle.val) == 6 and bundle.image_size == (6,)
    assert attempts == []


def test_pretokenised_columns_are_padded_and_masked(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    rows = [{"input_ids": [2, 5, 3][: 1 + i % 3], "label": i % 2} for i in range(12)]
    path = _write(tmp_path / "ids.json", rows)
    bundle = build_dataset(DataConfig(name="text", root=str(path), test_fraction=0.25))
    x = bundle.train.x
    assert set(x) == {"input_ids", "attention_mask"} and x["input_ids"].shape[1] == 3
    lengths = x["attention_mask"].sum(1)
    for ids, n in zip(x["input_ids"].tolist(), lengths.tolist()):
        assert ids == [2, 5, 3][:n] + [0] * (3 - n)


def test_text_data_errors_name_the_file_and_option(pair: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    path = _write(tmp_path / "t.csv", _rows())
    with pytest.raises(DataError, match="data.options.tokenizer: a text column is tokenised"):
        build_dataset(DataConfig(name="text", root=str(path)))
    with pytest.raises(DataError, match="tokenizer 'nowhere': no such folder; kdlab never"):
        build_dataset(DataConfig(name="text", root=str(path), options={"tokenizer": "nowhere"}))
    with pytest.raises(DataError, match=r"no text column 'none' to tokenise and no input_ids"):
        build_dataset(DataConfig(name="text", root=str(path), options={"text": "none"}))
    tok = {"tokenizer": str(pair["student"])}
    with pytest.raises(DataError, match=r"no label column 'y'; the file has columns \['label',"):
        build_dataset(DataConfig(name="text", root=str(path), options={"label": "y", **tok}))
    with pytest.raises(DataError, match=r"t.csv\[label\]: labels must be integers, got dtype <U3"):
        build_dataset(DataConfig(name="text", root=str(path), options=tok))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no train file"):
        build_dataset(DataConfig(name="text", root=str(tmp_path / "empty")))
    with pytest.raises(DataError, match="not an option of dataset 'text'; did you mean 'tokeni"):
        build_dataset(DataConfig(name="text", root=str(path), options={"tokeniser": "x"}))


def test_missing_datasets_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if absent
    path = _write(tmp_path / "t.jsonl", _rows())
    with pytest.raises(DataError, match=r"pip install 'kdlab\[text\]'"):
        build_dataset(DataConfig(name="text", root=str(path)))


def test_a_text_file_trains_from_the_cli(pair: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    data = _write(tmp_path / "reviews.parquet", _rows())
    recipe = tmp_path / "text.yaml"
    recipe.write_text(
        f"data: {{name: text, root: {data}, batch_size: 8,\n"
        f"       options: {{tokenizer: 'hf:{pair['student']}', label_map: sorted}}}}\n"
        f"student: {{name: 'hf:{pair['student']}'}}\n"
        f"teacher: {{name: 'hf:{pair['teacher']}'}}\n"
        "distill:\n"
        "  terms:\n"
        "    - {method: kd}\n"
        "    - {method: hidden_cosine, student: bert.encoder.layer.0,\n"
        "       teacher: bert.encoder.layer.1}\n"
        "train: {epochs: 1, progress: false, threads: 1, precision: fp32}\n"
    )
    assert cli.main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert row["train_kd"] > 0 and 0 < row["train_hidden_cosine"] < 2  # 1 - cos lies in [0, 2]
