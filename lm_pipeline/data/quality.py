"""What the validate stage leaves in validate.report_dir for the stages after it.

  result.json    every expectation's outcome (Great Expectations' JSON); preprocess depends on it
  metrics.json   corpus figures (duplicates, contamination, ...); the train stage logs them
  data_docs/     the Data Docs site
"""

from __future__ import annotations

from pathlib import Path

from lm_pipeline.io import read_json

RESULT_FILE = "result.json"
METRICS_FILE = "metrics.json"
DOCS_DIR = "data_docs"


def read_corpus_metrics(report_dir: Path) -> dict[str, float]:
    """The corpus figures of the last validation ({} if there was none)."""
    path = Path(report_dir) / METRICS_FILE
    return {k: float(v) for k, v in read_json(path).items()} if path.is_file() else {}


def check_validation_passed(report_dir: Path, stage: str) -> None:
    """Nothing after validation reads a corpus it failed. A corpus never validated (benchmarks, a
    stage run by hand) is allowed, with a warning in the log."""
    import logging

    path = Path(report_dir) / RESULT_FILE
    if not path.is_file():
        logging.getLogger(__name__).warning("%s: %s is missing: the corpus was not validated "
                                            "(run `lmp validate` first)", stage, path)
        return
    results = read_json(path)
    if not all(r.get("success") for r in results):
        raise ValueError(f"{stage}: the last validation of the corpus failed ({path}); fix the "
                         "corpus or the validate section of params.yaml and rerun `lmp validate`")
