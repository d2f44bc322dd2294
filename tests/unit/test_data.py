import json

import numpy as np
import pandas as pd
import pytest

from lm_pipeline.config import SplitConfig, TokenizerConfig
from lm_pipeline.data.ingest import iter_documents, python_docs
from lm_pipeline.data.preprocess import UniqueTexts
from lm_pipeline.data.processed import split_documents, token_dtype
from lm_pipeline.data.shards import ShardWriter, TokenShards
from lm_pipeline.data.split import assign_split
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
    cfg = SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=1)
    texts = [f"document {i}" for i in range(500)]
    first = [assign_split(t, cfg) for t in texts]
    assert first == [assign_split(t, cfg) for t in texts]
    counts = {s: first.count(s) for s in ("train", "val", "test")}
    assert 60 < counts["test"] < 140 and 60 < counts["val"] < 140
    other_seed = SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=2)
    assert first != [assign_split(t, other_seed) for t in texts]


def test_unique_texts_keeps_the_first_of_each_text_streaming(tmp_path):
    path = tmp_path / "documents.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate("xyxzy")))
    texts = UniqueTexts(path)
    assert list(texts) == ["x", "y", "z"] and texts.duplicates == 2
    assert list(texts) == ["x", "y", "z"] and texts.duplicates == 2  # a second pass starts afresh


def test_shards_have_fixed_size_and_read_back_as_one_stream(tmp_path):
    stream = np.arange(2500) % 700
    writer = ShardWriter(tmp_path / "train", np.uint16, shard_tokens=1024)
    for piece in np.split(stream, [10, 1500, 1501]):  # appends of any size, across shard borders
        writer.append(piece)
    entries = writer.close()
    assert [e["tokens"] for e in entries] == [1024, 1024, 452]
    assert [e["file"] for e in entries] == ["train/00000.bin", "train/00001.bin", "train/00002.bin"]
    shards = TokenShards(tmp_path, entries, np.uint16)
    assert len(shards) == 2500
    assert shards[1000:1100].tolist() == stream[1000:1100].tolist()  # a window across two shards
    assert shards[0:2500].tolist() == stream.tolist() and np.asarray(shards).tolist() == stream.tolist()
    assert shards.token_counts(700).tolist() == np.bincount(stream, minlength=700).tolist()


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
