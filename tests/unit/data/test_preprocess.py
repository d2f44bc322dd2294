import json

import pytest

from lm_pipeline.data.preprocess import UniqueTexts


def test_unique_texts_keeps_the_first_of_each_text_streaming(tmp_path):
    path = tmp_path / "documents.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate("xyxzy")))
    texts = UniqueTexts(path)
    assert list(texts) == ["x", "y", "z"] and texts.duplicates == 2
    assert list(texts) == ["x", "y", "z"] and texts.duplicates == 2  # a second pass starts afresh


@pytest.mark.bad_input
def test_a_corpus_that_failed_validation_is_not_preprocessed(tmp_path):
    from lm_pipeline.config import Config
    from lm_pipeline.data import preprocess
    from lm_pipeline.data.documents import DOCUMENTS_FILE

    raw, reports = tmp_path / "raw", tmp_path / "validation"
    raw.mkdir()
    (raw / DOCUMENTS_FILE).write_text("".join(json.dumps({"id": str(i), "text": f"document {i} " * 20}) + "\n"
                                              for i in range(200)))
    reports.mkdir()
    (reports / "result.json").write_text(json.dumps([{"success": True}, {"success": False}]))
    cfg = Config.model_validate({"data": {"raw_dir": str(raw), "processed_dir": str(tmp_path / "processed")},
                                 "validate": {"report_dir": str(reports)},
                                 "tokenizer": {"vocab_size": 300}})
    failed = r"validation of the corpus failed \(.*validation/result.json\).*lmp validate"
    with pytest.raises(ValueError, match=failed):
        preprocess.run(cfg)
    assert not (tmp_path / "processed").exists()
