import json

import numpy as np
import pandas as pd
import pytest

from lm_pipeline.config import Config, SplitConfig, TokenizerConfig
from lm_pipeline.data.ingest import IngestError, iter_documents, python_docs
from lm_pipeline.data.preprocess import assign_split, dedupe, split_documents, token_dtype
from lm_pipeline.data.tokenizer import eot_id, train_tokenizer

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Ünïcödé text, tabs\tand\nnewlines.",
         "def f(x):\n    return x ** 2  # code too"] * 5


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_tokenizer_round_trip(kind):
    tok = train_tokenizer(TEXTS, TokenizerConfig(kind=kind, vocab_size=300, min_frequency=1))
    for text in TEXTS:
        assert tok.decode(tok.encode(text).ids) == text
    assert eot_id(tok) == 0


def test_bpe_encodes_unseen_characters_without_loss():
    tok = train_tokenizer(TEXTS, TokenizerConfig(kind="bpe", vocab_size=300, min_frequency=1))
    assert tok.decode(tok.encode("日本語 ✓").ids) == "日本語 ✓"


def test_token_dtype_fits_vocab():
    assert token_dtype(65536) is np.uint16
    assert token_dtype(65537) is np.uint32


def test_split_is_seeded_and_independent_of_order():
    cfg = Config(split=SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=1))
    texts = [f"document {i}" for i in range(500)]
    first = [assign_split(t, cfg) for t in texts]
    assert first == [assign_split(t, cfg) for t in texts]
    counts = {s: first.count(s) for s in ("train", "val", "test")}
    assert 60 < counts["test"] < 140 and 60 < counts["val"] < 140
    other_seed = Config(split=SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=2))
    assert first != [assign_split(t, other_seed) for t in texts]


def test_dedupe_keeps_first_of_each_text():
    docs = [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "c", "text": "x"}]
    kept, dropped = dedupe(docs)
    assert [d["id"] for d in kept] == ["a", "b"] and dropped == 1


def test_split_documents_cuts_at_eot():
    stream = np.array([5, 6, 0, 7, 0, 8, 9, 10, 0])
    assert [d.tolist() for d in split_documents(stream, 0)] == [[5, 6], [7], [8, 9, 10]]


def test_builtin_corpus_is_real_english_prose():
    docs = list(python_docs(min_doc_chars=1))
    total = sum(len(d["text"]) for d in docs)
    assert len(docs) > 300 and total > 900_000
    assert any(d["id"] == "topics:assert" for d in docs)


def test_local_formats(tmp_path):
    (tmp_path / "a.txt").write_text("plain text document")
    (tmp_path / "b.jsonl").write_text('{"text": "first", "id": "j1"}\n\n{"text": "second"}\n')
    pd.DataFrame({"text": ["from parquet"]}).to_parquet(tmp_path / "c.parquet")
    (tmp_path / "ignored.csv").write_text("not,read")
    docs = list(iter_documents(str(tmp_path)))
    assert [d["text"] for d in docs] == ["plain text document", "first", "second", "from parquet"]
    assert docs[1]["id"] == "j1" and docs[2]["id"].endswith("b.jsonl:3")


@pytest.mark.bad_input
@pytest.mark.parametrize("content, message", [
    ('{"text": "ok"}\n{"body": "no text"}\n', r"b.jsonl:2: expected an object with a string 'text'"),
    ('{"text": "ok"}\n{"text": 42}\n', r"b.jsonl:2: expected an object with a string 'text'"),
    ('{"text": "ok"}\n{"text": "unclosed\n', r"b.jsonl:2: malformed JSON"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, content, message):
    (tmp_path / "b.jsonl").write_text(content)
    with pytest.raises(IngestError, match=message):
        list(iter_documents(str(tmp_path / "b.jsonl")))


@pytest.mark.bad_input
def test_missing_path_empty_folder_and_parquet_without_text(tmp_path):
    with pytest.raises(IngestError, match="does not exist"):
        list(iter_documents(str(tmp_path / "missing")))
    with pytest.raises(IngestError, match="has no .txt, .jsonl, .parquet files"):
        list(iter_documents(str(tmp_path)))
    pd.DataFrame({"body": ["x"]}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(IngestError, match=r"p.parquet: no 'text' column \(columns: body\)"):
        list(iter_documents(str(tmp_path / "p.parquet")))


def test_invalid_utf8_survives_ingest_for_validation(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe bytes")
    doc = next(iter_documents(str(tmp_path / "bad.txt")))
    assert "\udcff" in doc["text"]
    assert json.loads(json.dumps(doc, ensure_ascii=True))["text"] == doc["text"]
