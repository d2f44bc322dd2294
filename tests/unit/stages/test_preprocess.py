import json

import pytest

from lm_pipeline.data.tokenized import UniqueTexts


def test_unique_texts_keeps_the_first_of_each_text_streaming(tmp_path):
    path = tmp_path / "documents.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate("xyxzy")))
    texts = UniqueTexts(path)
    assert list(texts) == ["x", "y", "z"] and texts.duplicates == 2
    assert list(texts) == ["x", "y", "z"] and texts.duplicates == 2  # a second pass starts afresh


@pytest.mark.bad_input
def test_a_corpus_that_failed_validation_is_not_preprocessed(tmp_path):
    from lm_pipeline.config import Config
    from lm_pipeline.data.documents import DOCUMENTS_FILE
    from lm_pipeline.data.quality import record_validation
    from lm_pipeline.stages import preprocess

    raw, reports = tmp_path / "raw", tmp_path / "validation"
    raw.mkdir()
    (raw / DOCUMENTS_FILE).write_text("".join(json.dumps({"id": str(i), "text": f"document {i} " * 20}) + "\n"
                                              for i in range(200)))
    record_validation(reports, raw / DOCUMENTS_FILE, success=False)
    cfg = Config.model_validate({"filter": {"output_dir": str(raw)},
                                 "data": {"processed_dir": str(tmp_path / "processed")},
                                 "validate": {"report_dir": str(reports)},
                                 "tokenizer": {"vocab_size": 300}})
    failed = r"validation of the corpus failed \(.*validation/result.json\).*lmp validate"
    with pytest.raises(ValueError, match=failed):
        preprocess.run(cfg)
    assert not (tmp_path / "processed").exists()


@pytest.mark.metrics
def test_bytes_per_split_are_counted_on_the_text_not_on_decoded_tokens(tmp_path):
    """Bits per byte divides by these: a character tokenizer's <unk> decodes to nothing, so a
    count taken from decoded tokens would be too low (and bits per byte too high)."""
    from tokenizers import Tokenizer

    from lm_pipeline.config import Config
    from lm_pipeline.data.documents import DOCUMENTS_FILE
    from lm_pipeline.data.processed import load_documents, read_meta, tokenizer_path
    from lm_pipeline.data.split import assign_split
    from lm_pipeline.stages import preprocess

    raw = tmp_path / "raw"
    raw.mkdir()
    # each document has a character of its own: in validation and test ones, the tokenizer
    # (trained on the training split) has never seen it
    texts = [f"document {i} costs {chr(0x4E00 + i)} and é. " * 5 for i in range(300)]
    (raw / DOCUMENTS_FILE).write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n"
                                              for i, t in enumerate(texts)))
    cfg = Config.model_validate({"filter": {"output_dir": str(raw)},
                                 "data": {"processed_dir": str(tmp_path / "processed")},
                                 "validate": {"report_dir": str(tmp_path / "validation"), "required": False},
                                 "tokenizer": {"kind": "char"}})
    preprocess.run(cfg)
    meta = read_meta(cfg.data.processed_dir)
    for split in ("train", "val", "test"):
        expected = sum(len(t.encode("utf-8")) for t in texts if assign_split(t, cfg.split) == split)
        if split == "train":  # the planted canaries are training documents too
            expected += sum(len(f"{c['prefix']} {c['secret']}.") for c in meta.canaries)
        assert meta.text_bytes[split] == expected > 0
    assert meta.unknown["test"] > 0
    tokenizer = Tokenizer.from_file(str(tokenizer_path(cfg.data.processed_dir)))
    decoded = sum(len(tokenizer.decode(d.tolist()).encode("utf-8"))
                  for d in load_documents(cfg.data.processed_dir, "test"))
    assert decoded < meta.text_bytes["test"]


@pytest.mark.security
def test_filter_and_preprocess_read_only_the_corpus_validation_passed(tmp_path):
    """The gate is tied to the documents' hash: a corpus never validated, changed after it was
    validated, or filtered from another corpus than the validated one is refused."""
    from lm_pipeline.config import Config
    from lm_pipeline.stages import filter, preprocess, validate

    raw = tmp_path / "raw" / "documents.jsonl"
    raw.parent.mkdir()
    prose = "The tuple type is an immutable sequence, and a list is a mutable one of {} items."

    def write_corpus(offset: int) -> None:
        raw.write_text("".join(json.dumps({"id": str(i), "text": prose.format(i + offset) * 3}) + "\n"
                               for i in range(150)))

    write_corpus(0)
    cfg = Config.model_validate({"data": {"raw_dir": str(raw.parent),
                                          "processed_dir": str(tmp_path / "processed")},
                                 "validate": {"report_dir": str(tmp_path / "validation"),
                                              "max_near_duplicate_ratio": 1.0},
                                 "filter": {"output_dir": str(tmp_path / "filtered"), "steps": [],
                                            "report_dir": str(tmp_path / "funnel")},
                                 "tokenizer": {"kind": "char"}})
    with pytest.raises(ValueError, match=r"filter: the corpus .*documents.jsonl was not validated"):
        filter.run(cfg)
    validate.run(cfg)
    write_corpus(1000)  # changed after it was validated
    with pytest.raises(ValueError, match=r"filter: .*documents.jsonl is not the corpus validation passed"):
        filter.run(cfg)
    validate.run(cfg)
    filter.run(cfg)
    write_corpus(0)
    validate.run(cfg)  # validated anew, but the filtered documents are the other corpus's
    with pytest.raises(ValueError, match=r"preprocess: .*filtered.* not the corpus validation passed"):
        preprocess.run(cfg)
    assert not (tmp_path / "processed").exists()
    filter.run(cfg)
    filtered = tmp_path / "filtered" / "documents.jsonl"
    kept = filtered.read_text()
    filtered.write_text(kept + json.dumps({"id": "added", "text": "after filtering"}) + "\n")
    with pytest.raises(ValueError, match=r"preprocess: .*filtered/documents.jsonl changed after the filter"):
        preprocess.run(cfg)
    filtered.write_text(kept)
    assert preprocess.run(cfg).tokens["train"] > 0


@pytest.mark.bad_input
def test_a_document_quoting_the_end_of_text_token_stays_one_document(tmp_path):
    """Corpus text is text: a document that writes <|endoftext|> (a page about tokenizers) gets
    its characters, not the token that ends documents, which cut it in two in the token stream
    and let the corpus write the separator the model is trained and scored on."""
    from tokenizers import Tokenizer

    from lm_pipeline.config import Config
    from lm_pipeline.data.documents import DOCUMENTS_FILE
    from lm_pipeline.data.processed import load_documents, read_meta, tokenizer_path
    from lm_pipeline.data.split import assign_split
    from lm_pipeline.data.tokenizer import EOT
    from lm_pipeline.stages import preprocess

    raw = tmp_path / "raw"
    raw.mkdir()
    texts = [f"document {i} lists {i % 7} tuples and {i % 5} lists. " * 3 +
             (f"GPT-2 ends each document with {EOT} and starts the next." if i % 3 == 0 else "")
             for i in range(300)]
    (raw / DOCUMENTS_FILE).write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n"
                                              for i, t in enumerate(texts)))
    cfg = Config.model_validate({"filter": {"output_dir": str(raw)},
                                 "data": {"processed_dir": str(tmp_path / "processed")},
                                 "validate": {"report_dir": str(tmp_path / "validation"), "required": False},
                                 "tokenizer": {"vocab_size": 300}, "canaries": {"count": 0},
                                 "register": {"max_canary_exposure": None}})
    preprocess.run(cfg)
    meta = read_meta(cfg.data.processed_dir)
    tokenizer = Tokenizer.from_file(str(tokenizer_path(cfg.data.processed_dir)))
    for split in ("val", "test"):
        expected = sorted(t for t in texts if assign_split(t, cfg.split) == split)
        documents = load_documents(cfg.data.processed_dir, split)
        assert sorted(tokenizer.decode(d.tolist(), skip_special_tokens=False) for d in documents) == expected
        assert meta.documents[split] == len(expected)
