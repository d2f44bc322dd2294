import json
import random

import pytest

from lm_pipeline.config import Config, DataConfig, SplitConfig, ValidateConfig
from lm_pipeline.data.documents import DOCUMENTS_FILE
from lm_pipeline.data.profile import corpus_metrics, scan_corpus
from lm_pipeline.data.quality import METRICS_FILE
from lm_pipeline.data.split import assign_split
from lm_pipeline.stages import validate

WORDS = ("the of and to a in is it that for as with was on be by this are or not from at an which "
         "interpreter reads file line list tuple string module class function value name object "
         "method call return type error module package import loop index key dict set byte number "
         "thread socket path buffer stream iterator generator context manager attribute default "
         "argument keyword parameter result exception handler frame code text encoding").split()


def prose(i: int, words: int = 60) -> str:
    """A distinct document of English-like word soup (seeded by i)."""
    rng = random.Random(i)
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def write_docs(tmp_path, texts, **limits) -> Config:
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    with open(raw / DOCUMENTS_FILE, "w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": f"doc{i}", "text": text, "source": "test"}, ensure_ascii=True) + "\n")
    limits = {"min_rows": 5, "max_chars": 1000, "report_dir": tmp_path / "reports"} | limits
    return Config(data=DataConfig(raw_dir=raw), validate=ValidateConfig(**limits))


def test_clean_corpus_passes_and_writes_reports(tmp_path):
    cfg = write_docs(tmp_path, [prose(i) for i in range(60)])
    report = validate.run(cfg)
    assert report.success and report.rows == 60 and len(report.checks) == 10
    assert all(r["success"] for r in json.loads(report.result_path.read_text()))
    assert report.data_docs.is_file()
    metrics = json.loads((tmp_path / "reports" / METRICS_FILE).read_text())
    assert metrics["documents"] == 60 and metrics["duplicate_share"] == 0
    assert metrics["near_duplicate_share"] == 0 and 0.2 < metrics["common_word_share"] < 0.6


@pytest.mark.bad_input
def test_broken_corpus_names_each_failed_expectation_and_documents(tmp_path):
    texts = [prose(i) for i in range(40)]
    texts += ["", "has a NUL\x00 here " * 3, "bad \udcff utf8 in prose", "x" * 1500] + [texts[0]] * 6
    cfg = write_docs(tmp_path, texts)
    with pytest.raises(validate.ValidationFailed) as err:
        validate.run(cfg)
    message = str(err.value)
    assert "failed 4 of 10 expectations" in message
    assert "text length in [1, 1000] (non-empty)): observed 2 (e.g. doc40, doc43)" in message
    assert "control characters at most 0.1% of a text): observed 1 (e.g. doc41)" in message
    assert "valid UTF-8): observed 1 (e.g. doc42)" in message
    assert "at most 10% duplicate texts): observed 0.12 (e.g. doc44, doc45" in message
    docs = tmp_path / "reports" / "data_docs" / "index.html"
    assert str(docs) in message and docs.is_file()
    corpus, documents = json.loads((tmp_path / "reports" / "result.json").read_text())
    assert corpus["success"] is False and documents["success"] is True


@pytest.mark.bad_input
def test_too_few_rows_fails(tmp_path):
    cfg = write_docs(tmp_path, [prose(1)])
    with pytest.raises(validate.ValidationFailed, match=r"at least 5 documents\): observed 1"):
        validate.run(cfg)


@pytest.mark.bad_input
def test_symbols_and_non_prose_fail_charset_and_language_checks(tmp_path):
    junk = ["QUJDREVGR0hJSktMTU5PUA== 0x3f 0x41 0x7e ++ -- == // ## @@ %% && 12345 67890" * 2] * 1
    texts = [f"{j} {i}" for i in range(40) for j in junk]
    cfg = write_docs(tmp_path, texts, max_near_duplicate_ratio=1.0)
    with pytest.raises(validate.ValidationFailed) as err:
        validate.run(cfg)
    message = str(err.value)
    assert "letters at least 50% of visible characters (95% of documents)): 40 of 40 documents" in message
    assert "English prose: common words at least 5% of words on average): observed 0" in message


@pytest.mark.bad_input
def test_near_duplicates_are_flagged(tmp_path):
    base = [prose(i) for i in range(40)]
    near = [text[:-1] + " indeed." for text in base[:10]]  # one word more
    cfg = write_docs(tmp_path, base + near)
    with pytest.raises(validate.ValidationFailed, match=r"at most 10% near duplicates.*: 10 of 50 "
                                                        r"documents broke it \(e.g. doc40, doc41"):
        validate.run(cfg)


@pytest.mark.bad_input
def test_a_test_split_copied_from_training_text_is_flagged_as_contamination(tmp_path):
    """Test documents that paste whole passages of training documents (with a new first line, so
    they are not exact duplicates) are caught by their n-gram overlap with the training split."""
    split = SplitConfig(val_fraction=0.1, test_fraction=0.3, seed=7)
    texts = [prose(i) for i in range(60)]
    train = [t for t in texts if assign_split(t, split) == "train"]
    copies = []
    for i, passage in enumerate(train * 3):  # enough tries for a dozen copies to land in test
        copy = f"Copied note {i}. {passage}"
        if assign_split(copy, split) == "test":
            copies.append(copy)
    assert len(copies) >= 10
    cfg = write_docs(tmp_path, texts + copies[:10], max_near_duplicate_ratio=1.0)
    cfg = cfg.model_copy(update={"split": split})
    with pytest.raises(validate.ValidationFailed) as err:
        validate.run(cfg)
    assert "test not copied from train" in str(err.value)
    assert "failed 1 of 10" in str(err.value)
    metrics = json.loads((tmp_path / "reports" / METRICS_FILE).read_text())
    assert metrics["test_train_overlap_max"] > 0.9

    (tmp_path / "clean").mkdir()
    clean = write_docs(tmp_path / "clean", texts).model_copy(update={"split": split})
    assert validate.run(clean).success  # the same corpus without the copies passes


@pytest.mark.security
def test_a_document_id_or_text_that_is_markup_shows_escaped_in_the_data_docs(tmp_path):
    cfg = write_docs(tmp_path, [prose(i) for i in range(40)])
    documents = tmp_path / "raw" / DOCUMENTS_FILE
    symbols = [json.dumps({"id": f"<script>alert({i})</script>", "text": f"<script>alert({i})</script> "
                           + "{}[]<>/=;:()" * 20, "source": "test"}) for i in range(4)]
    documents.write_text(documents.read_text() + "\n".join(symbols) + "\n")  # fail letter_share
    with pytest.raises(validate.ValidationFailed, match=r"letters"):
        validate.run(cfg)
    # Data Docs show the failing values (letter shares), not ids or texts; were they ever shown,
    # they must be escaped.
    pages = [p.read_text() for p in (tmp_path / "reports" / "data_docs").rglob("*.html")]
    assert len(pages) >= 3 and not any("<script>alert(" in page for page in pages)


def test_a_mixtures_shares_are_counted_over_every_document_as_metrics_mlflow_accepts():
    import pandas as pd

    docs = [{"id": "1", "text": "aaaa", "mixture": "web"}, {"id": "2", "text": "bb", "mixture": "s3://b/code"},
            {"id": "3", "text": "cccccc", "mixture": "web"}]
    scan = scan_corpus(iter(docs), Config().validate_, Config().split)
    metrics = corpus_metrics(scan, pd.DataFrame(columns=["train_overlap"]))
    assert metrics["mixture_share/web"] == pytest.approx(10 / 12)
    assert metrics["mixture_share/s3_//b/code"] == pytest.approx(2 / 12)


def write_mixture(tmp_path, code_thresholds: dict, web_thresholds: dict | None = None) -> Config:
    """40 prose documents from corpora/web and 40 code-like ones (a quarter letters, no English)
    from the source named code."""
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    docs = [{"id": f"web{i}", "text": prose(i), "mixture": "corpora/web"} for i in range(40)]
    docs += [{"id": f"code{i}", "text": f"x{i} = f(y2) + 0x3f; z[{i}] = {{4: 5}} # {i}", "mixture": "code"}
             for i in range(40)]
    (raw / DOCUMENTS_FILE).write_text("".join(json.dumps(d) + "\n" for d in docs))
    # web is named by its path (a label with slashes), code by its name
    sources = [{"source": "corpora/web", "weight": 1, "validate": web_thresholds or {}},
               {"source": "s3://corpora/code", "weight": 1, "name": "code", "validate": code_thresholds}]
    return Config(data=DataConfig(raw_dir=raw, sources=sources),
                  validate=ValidateConfig(min_rows=5, max_chars=1000, max_near_duplicate_ratio=1.0,
                                          report_dir=tmp_path / "reports"))


@pytest.mark.bad_input
def test_a_source_of_a_mixture_is_checked_against_its_own_thresholds(tmp_path):
    """Code is not English prose: its own letter and common-word bars let it pass, while prose from
    the other source is still held to the validate section's, each failure naming its source."""
    with pytest.raises(validate.ValidationFailed, match=r"code: text, not symbols: letters at least 50%.*"
                                                        r"40 of 40 documents broke it \(e.g. code0"):
        validate.run(write_mixture(tmp_path, {"min_letter_share": 0.5}))  # the global bar, said again

    code = {"min_letter_share": 0.2, "min_common_word_share": 0}
    report = validate.run(write_mixture(tmp_path, code))
    assert report.success and report.rows == 80
    batches = json.loads(report.result_path.read_text())
    assert len(batches) == 3  # the corpus counters, then web's and code's documents
    assert any("code: text, not symbols: letters at least 20%" in c.description for c in report.checks)

    strict_web = {"min_common_word_share": 0.95}
    with pytest.raises(validate.ValidationFailed) as err:
        validate.run(write_mixture(tmp_path, code, strict_web))
    assert "failed 1 of 15 expectations" in str(err.value)
    assert "corpora/web: English prose: common words at least 95% of words on average" in str(err.value)


def test_only_document_checks_can_be_set_per_source():
    with pytest.raises(ValueError, match=r"sources.0.validate\s+Value error, min_rows: not a per-source "
                                         r"threshold"):
        DataConfig(sources=[{"source": "a", "weight": 1, "validate": {"min_rows": 3}}])
    with pytest.raises(ValueError, match=r"min_letter_share\s+Input should be less than or equal to 1"):
        DataConfig(sources=[{"source": "a", "weight": 1, "validate": {"min_letter_share": 2}}])


@pytest.mark.security
def test_a_failure_naming_documents_shows_their_escape_sequences_escaped(tmp_path):
    cfg = write_docs(tmp_path, [prose(i) for i in range(10)])
    hostile = {"id": "doc\x1b]52;c;ZXZpbA==\x07\x1b[2J\rforged", "text": "", "source": "test"}
    with open(cfg.data.raw_dir / DOCUMENTS_FILE, "a") as f:
        f.write(json.dumps(hostile) + "\n")
    with pytest.raises(validate.ValidationFailed) as err:
        validate.run(cfg)
    assert "\x1b" not in str(err.value) and "\r" not in str(err.value)
    assert r"(e.g. doc\x1b]52;c;ZXZpbA==\x07\x1b[2J\rforged)" in str(err.value)
