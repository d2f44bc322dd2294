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
