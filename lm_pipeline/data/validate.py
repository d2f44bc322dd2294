"""Stage 2, validate: a Great Expectations suite over the ingested documents.

Writes the full validation result (JSON) and GX Data Docs (HTML) under reports/validation/.
A failed suite raises ValidationFailed naming each failed expectation and how many rows broke it,
so nothing downstream runs.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lm_pipeline.config import Config, ValidateConfig
from lm_pipeline.data.ingest import DOCUMENTS_FILE, read_documents
from lm_pipeline.io import atomic_path

log = logging.getLogger(__name__)

CONTROL_CHARS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"  # NUL and C0 controls other than \t \n \r
REPLACEMENT = "\ufffd"
_SURROGATES = re.compile(r"[\ud800-\udfff]")  # undecodable bytes, kept by surrogateescape
RESULT_FILE = "result.json"
DOCS_DIR = "data_docs"


class ValidationFailed(RuntimeError):
    """The corpus broke the suite; the message lists each failed expectation."""


@dataclass(frozen=True)
class Check:
    expectation: str
    description: str
    success: bool
    unexpected_count: int | None
    observed: object

    def describe(self) -> str:
        broke = f"{self.unexpected_count} rows broke it" if self.unexpected_count is not None \
            else f"observed {self.observed!r}"
        return f"{self.expectation} ({self.description}): {broke}"


@dataclass(frozen=True)
class ValidationReport:
    success: bool
    checks: list[Check]
    rows: int
    result_path: Path
    data_docs: Path


def run(cfg: Config) -> ValidationReport:
    source = cfg.data.raw_dir / DOCUMENTS_FILE
    frame = load_frame(source)
    report = validate_frame(frame, cfg.validate_)
    if not report.success:
        failed = "\n  - ".join(c.describe() for c in report.checks if not c.success)
        raise ValidationFailed(
            f"validate: {source} failed {sum(not c.success for c in report.checks)} of "
            f"{len(report.checks)} expectations:\n  - {failed}\n"
            f"Data Docs: {report.data_docs}"
        )
    log.info("validate: %d documents passed %d expectations; Data Docs: %s",
             report.rows, len(report.checks), report.data_docs)
    return report


def load_frame(path: Path) -> pd.DataFrame:
    """Documents as an object-dtype frame; undecodable bytes become U+FFFD, one for one.

    pandas 3's Arrow strings (and GX's batch hashing) cannot hold lone surrogates, and U+FFFD
    keeps lengths unchanged while marking the spot for the UTF-8 expectation.
    """
    rows = list(read_documents(path))
    for row in rows:
        if isinstance(row.get("text"), str):
            row["text"] = _SURROGATES.sub(REPLACEMENT, row["text"])
    return pd.DataFrame(rows, columns=list(rows[0]) if rows else ["id", "text", "source"], dtype=object)


def expectations(cfg: ValidateConfig) -> list:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=["id", "text", "source"], exact_match=True,
                                         description="schema is {id, text, source}"),
        gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows, description="enough documents"),
        gxe.ExpectColumnValuesToNotBeNull(column="text", description="text is present"),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column="text", min_value=cfg.min_chars, max_value=cfg.max_chars,
            description=f"text length in [{cfg.min_chars}, {cfg.max_chars}] (non-empty)"),
        gxe.ExpectColumnValuesToNotMatchRegex(
            column="text", regex=CONTROL_CHARS, description="no NUL or control characters"),
        gxe.ExpectColumnValuesToNotMatchRegex(
            column="text", regex=REPLACEMENT, description="valid UTF-8"),
        gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(
            column="text", min_value=1 - cfg.max_duplicate_ratio,
            description=f"at most {cfg.max_duplicate_ratio:.0%} duplicate texts"),
    ]


def validate_frame(frame: pd.DataFrame, cfg: ValidateConfig) -> ValidationReport:
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # it logs setup chatter at INFO
    context = gx.get_context(mode="ephemeral")  # in-memory: nothing written but our reports
    context.variables.progress_bars = {"globally": False}
    docs_dir = (cfg.report_dir / DOCS_DIR).resolve()
    # The ephemeral context ships a Data Docs site in a temp dir; point it at reports/.
    context.update_data_docs_site(site_name="local_site", site_config={
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    batch = (context.data_sources.add_pandas("corpus").add_dataframe_asset("documents")
             .add_batch_definition_whole_dataframe("all"))
    suite = context.suites.add(gx.ExpectationSuite(name="corpus", expectations=expectations(cfg)))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="corpus", data=batch, suite=suite))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name="corpus", validation_definitions=[definition],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
        result_format={"result_format": "SUMMARY"}))
    result = next(iter(checkpoint.run(batch_parameters={"dataframe": frame}).run_results.values()))

    result_path = cfg.report_dir / RESULT_FILE
    with atomic_path(result_path) as tmp:
        tmp.write_text(json.dumps(result.to_json_dict(), indent=2))
    checks = [to_check(r) for r in result.results]
    return ValidationReport(bool(result.success), checks, len(frame), result_path,
                            docs_dir / "index.html")


def to_check(r) -> Check:
    res = r.result or {}
    return Check(r.expectation_config.type, r.expectation_config.description or "",
                 bool(r.success), res.get("unexpected_count"), res.get("observed_value"))
