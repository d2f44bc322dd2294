import json

import numpy as np
import pytest

from lm_pipeline.config import Config, TokenizerConfig
from lm_pipeline.data.encode import encode_texts, local_batches
from lm_pipeline.data.parallel import use_ray  # preprocessing and filtering share the rule
from lm_pipeline.data.tokenizer import eot_id, train_tokenizer


def test_each_document_is_its_ids_and_the_end_token_in_the_shard_dtype():
    tokenizer = train_tokenizer(["abc abd"], TokenizerConfig(kind="char"))
    batch = encode_texts(["ab", "abz"], tokenizer, Config().split, np.uint16)
    ids = [np.frombuffer(b, dtype=np.uint16).tolist() for b in batch["ids"]]
    eot, unk = eot_id(tokenizer), tokenizer.token_to_id("<unk>")
    assert ids == [[tokenizer.token_to_id("a"), tokenizer.token_to_id("b"), eot],
                   [tokenizer.token_to_id("a"), tokenizer.token_to_id("b"), unk, eot]]
    assert batch["unknown"] == [0, 1] and batch["text"] == ["", "abz"]  # text kept for examples only
    assert batch["characters"] == [2, 3] and batch["text_bytes"] == [2, 3]


def test_local_batches_keep_the_file_order(tmp_path):
    path = tmp_path / "documents.jsonl"
    texts = [f"document {i}" for i in range(50)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tokenizer = train_tokenizer(texts, TokenizerConfig(kind="char"))
    batches = list(local_batches(path, tokenizer, Config(), np.uint16))
    characters = [n for batch in batches for n in batch["characters"]]
    assert characters == [len(t) for t in texts]


@pytest.mark.parametrize(("setting", "address", "size", "expected"), [
    ("auto", None, 10 << 30, False),  # no cluster: Ray would only start one on this machine
    ("auto", "10.0.0.1:6379", 10 << 30, True),
    ("auto", "10.0.0.1:6379", 1 << 20, False),  # small: Ray's start-up costs more than it saves
    ("ray", None, 1, True),
    ("local", "10.0.0.1:6379", 10 << 30, False),
])
def test_auto_takes_ray_for_a_large_corpus_on_a_configured_cluster(tmp_path, monkeypatch, setting,
                                                                    address, size, expected):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    source = tmp_path / "documents.jsonl"
    with open(source, "wb") as f:
        f.truncate(size)  # sparse: the size is what counts
    cfg = Config.model_validate({"data": {"preprocess_on": setting}, "ray": {"address": address}})
    assert use_ray(cfg, source) is expected


@pytest.mark.parametrize("size", [1, 7, 40, 10_000])
def test_byte_ranges_cover_the_file_and_cut_only_between_lines(tmp_path, size):
    from lm_pipeline.data.parallel import line_ranges, read_lines

    path = tmp_path / "documents.jsonl"
    # raw multi-byte characters and a line separator that is not a newline (U+2028)
    texts = [f"doc {i} " + "é" * (i % 5) + "\u2028" for i in range(30)]
    lines = [json.dumps({"text": text}, ensure_ascii=False) for text in texts]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ranges = line_ranges(path, size)
    assert ranges[0][0] == 0 and ranges[-1][1] == path.stat().st_size
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # no gap, no overlap
    read = [line for a, b in ranges
            for line in read_lines({"start": np.array([a]), "end": np.array([b])}, str(path))["text"]]
    assert read == lines  # every line once, whole, in order
