import json

import pytest

from lm_pipeline.config import Config, DataConfig, ValidateConfig
from lm_pipeline.data import validate
from lm_pipeline.data.ingest import DOCUMENTS_FILE


def write_docs(tmp_path, texts) -> Config:
    raw = tmp_path / "raw"
    raw.mkdir()
    with open(raw / DOCUMENTS_FILE, "w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": str(i), "text": text, "source": "test"}, ensure_ascii=True) + "\n")
    return Config(data=DataConfig(raw_dir=raw),
                  validate=ValidateConfig(min_rows=5, max_chars=200, max_duplicate_ratio=0.1,
                                          report_dir=tmp_path / "reports"))


def test_clean_corpus_passes_and_writes_reports(tmp_path):
    cfg = write_docs(tmp_path, [f"document number {i} is fine" for i in range(20)])
    report = validate.run(cfg)
    assert report.success and report.rows == 20 and len(report.checks) == 7
    assert json.loads(report.result_path.read_text())["success"] is True
    assert report.data_docs.is_file()


@pytest.mark.bad_input
def test_broken_corpus_names_each_failed_expectation_and_rows(tmp_path):
    texts = [f"good document {i}" for i in range(20)]
    texts += ["", "", "has a NUL\x00 here", "bad \udcff utf8", "x" * 500] + ["dup"] * 4
    cfg = write_docs(tmp_path, texts)
    with pytest.raises(validate.ValidationFailed) as err:
        validate.run(cfg)
    message = str(err.value)
    assert "failed 4 of 7 expectations" in message
    assert "text length in [1, 200] (non-empty)): 3 rows broke it" in message
    assert "no NUL or control characters): 1 rows broke it" in message
    assert "valid UTF-8): 1 rows broke it" in message
    assert "at most 10% duplicate texts): observed" in message
    docs = tmp_path / "reports" / "data_docs" / "index.html"
    assert str(docs) in message and docs.is_file()
    assert json.loads((tmp_path / "reports" / "result.json").read_text())["success"] is False


@pytest.mark.bad_input
def test_too_few_rows_fails(tmp_path):
    cfg = write_docs(tmp_path, ["only one"])
    with pytest.raises(validate.ValidationFailed, match="enough documents.*observed 1"):
        validate.run(cfg)
