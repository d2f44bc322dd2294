"""Stage 2, validate: text-aware Great Expectations checks over the ingested documents.

One streaming pass profiles the corpus (data/profile.py): counters over every document for the
rules no sample may miss, and per-document features of all documents or a seeded sample of
validate.sample_documents (median length, share of letters, share of common English words, near
duplicates and, for test documents, the share of their n-grams that also occur in the training
split). The suites (data/expectations.py) check both, with Data Docs under reports/validation/.

Corpus figures go to reports/validation/metrics.json (the train stage logs them to MLflow). A
failed check raises ValidationFailed naming each expectation, how much broke it and example
document ids, so nothing downstream runs.
"""

from __future__ import annotations

import logging

from lm_pipeline.config import Config
from lm_pipeline.data.documents import documents_path, read_documents
from lm_pipeline.data.expectations import ValidationReport, check_documents
from lm_pipeline.data.quality import METRICS_FILE, VALIDATED_FILE, record_validation
from lm_pipeline.io import write_json

log = logging.getLogger(__name__)


class ValidationFailed(RuntimeError):
    """The corpus broke the suite; the message lists each failed expectation."""


def run(cfg: Config) -> ValidationReport:
    source = documents_path(cfg.data.raw_dir)
    (cfg.validate_.report_dir / VALIDATED_FILE).unlink(missing_ok=True)  # one cut short passed nothing
    report, metrics = check_documents(lambda: read_documents(source), cfg)
    write_json(cfg.validate_.report_dir / METRICS_FILE, metrics)
    record_validation(cfg.validate_.report_dir, source, report.success)
    if not report.success:
        failed = "\n  - ".join(c.describe() for c in report.checks if not c.success)
        raise ValidationFailed(
            f"validate: {source} failed {sum(not c.success for c in report.checks)} of "
            f"{len(report.checks)} expectations:\n  - {failed}\n"
            f"Data Docs: {report.data_docs}")
    log.info("validate: %d documents (%d sampled) passed %d expectations; Data Docs: %s",
             metrics["documents"], metrics["sampled_documents"], len(report.checks), report.data_docs)
    return report
