"""What the validate stage leaves in validate.report_dir for the stages after it.

  result.json    every expectation's outcome (Great Expectations' JSON)
  validated.json which documents were checked (their sha256) and whether they passed: the gate
                 filter and preprocess check
  metrics.json   corpus figures (duplicates, contamination, ...); the train stage logs them
  data_docs/     the Data Docs site
"""

from __future__ import annotations

from pathlib import Path

from lm_pipeline.hashing import file_sha256
from lm_pipeline.io import read_json, write_json

RESULT_FILE = "result.json"
VALIDATED_FILE = "validated.json"
SOURCE_FILE = "source.json"  # beside documents derived from the corpus (filtered): the corpus's sha256
METRICS_FILE = "metrics.json"
DOCS_DIR = "data_docs"


def read_corpus_metrics(report_dir: Path) -> dict[str, float]:
    """The corpus figures of the last validation ({} if there was none)."""
    path = Path(report_dir) / METRICS_FILE
    return {k: float(v) for k, v in read_json(path).items()} if path.is_file() else {}


def record_validation(report_dir: Path, documents: Path, success: bool) -> None:
    write_json(Path(report_dir) / VALIDATED_FILE, {"documents": str(documents), "success": success,
                                                   "documents_sha256": file_sha256(documents)})


def record_source(documents: Path, corpus_sha256: str) -> None:
    """Derived documents (the filter's) name the corpus they came from, beside them, with their own
    hash, so the gate holds after them."""
    write_json(Path(documents).parent / SOURCE_FILE, {"documents_sha256": corpus_sha256,
                                                      "derived_sha256": file_sha256(documents)})


def source_of(documents: Path) -> str | None:
    """The hash of the corpus `documents` were derived from (None: not derived); refused if they
    changed since."""
    path = Path(documents).parent / SOURCE_FILE
    if not path.is_file():
        return None
    record = read_json(path)
    if file_sha256(documents) != record.get("derived_sha256"):
        raise ValueError(f"preprocess: {documents} changed after the filter wrote it: rerun `lmp filter`")
    return record.get("documents_sha256")


def check_validation_passed(report_dir: Path, required: bool, documents_sha256: str | None, what: Path,
                            stage: str) -> None:
    """Nothing after validation reads a corpus it did not pass: `what` (whose corpus hashes to
    `documents_sha256`) must be the one the last validation checked, and it must have passed."""
    import logging

    path = Path(report_dir) / VALIDATED_FILE
    if not path.is_file() and not required:
        logging.getLogger(__name__).warning("%s: the corpus %s was not validated (validate.required is "
                                            "false)", stage, what)
        return
    if not path.is_file():
        raise ValueError(f"{stage}: the corpus {what} was not validated ({path} is missing): run "
                         "`lmp validate` first")
    stamp = read_json(path)
    if not stamp.get("success"):
        result = Path(report_dir) / RESULT_FILE
        raise ValueError(f"{stage}: the last validation of the corpus failed ({result}); "
                         "fix the corpus or the validate section of params.yaml and rerun `lmp validate`")
    if documents_sha256 != stamp.get("documents_sha256"):
        raise ValueError(f"{stage}: {what} is not the corpus validation passed (it checked "
                         f"{stamp.get('documents')} with another sha256): rerun `lmp validate` and the "
                         "stages after it")
