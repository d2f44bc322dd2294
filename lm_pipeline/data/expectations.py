"""The Great Expectations suites of the data checks, and their results as named checks.

Two kinds of batch, both in the Data Docs under reports/validation/:
- `corpus`: one row of counters streamed over every document (profile.CorpusScan), for the rules
  no sample may miss (row count, length bounds, control characters, invalid UTF-8, duplicates);
- `documents`: one row per sampled document with its features (profile.document_frame), for the
  distribution checks; one batch per source where a mixture's source sets its own thresholds.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lm_pipeline.config import Config, ValidateConfig
from lm_pipeline.data.profile import EXAMPLES, corpus_metrics, document_frame, scan_corpus
from lm_pipeline.data.quality import DOCS_DIR, RESULT_FILE
from lm_pipeline.data.split import assign_split
from lm_pipeline.io import atomic_path
from lm_pipeline.text import terminal_safe

log = logging.getLogger(__name__)
BATCH_UNSAFE = re.compile(r"[^\w.-]+")  # what a Great Expectations batch name may not hold


@dataclass(frozen=True)
class Check:
    expectation: str
    description: str
    success: bool
    broken: str  # how much broke it: "3 of 120 documents", "observed 0.41"
    examples: tuple[str, ...] = ()  # document ids, as the corpus gives them

    def describe(self) -> str:
        ids = ", ".join(terminal_safe(example, one_line=True) for example in self.examples)
        named = f" (e.g. {ids})" if self.examples else ""
        return f"{self.expectation} ({self.description}): {self.broken}{named}"


@dataclass(frozen=True)
class ValidationReport:
    success: bool
    checks: list[Check]
    rows: int
    result_path: Path
    data_docs: Path
    metrics: dict = field(default_factory=dict)


def corpus_expectations(validate: ValidateConfig) -> list:
    import great_expectations.expectations as gxe

    def at_most(column, value, description):
        return gxe.ExpectColumnValuesToBeBetween(column=column, max_value=value, description=description)

    return [
        gxe.ExpectColumnValuesToBeBetween(column="documents", min_value=validate.min_rows,
                                          description=f"at least {validate.min_rows} documents"),
        at_most("bad_length", 0, f"text length in [{validate.min_chars}, {validate.max_chars}] (non-empty)"),
        at_most("control_heavy", 0, f"control characters at most {validate.max_control_share:.1%} of a text"),
        at_most("invalid_utf8", 0, "valid UTF-8"),
        at_most("duplicate_share", validate.max_duplicate_ratio,
                f"at most {validate.max_duplicate_ratio:.0%} duplicate texts"),
    ]


def check_documents(documents: Callable[[], Iterable[dict]], cfg: Config) -> tuple[ValidationReport, dict]:
    """Profile the documents (`documents()` gives a fresh stream: it is read twice) and run the
    suites on them: the report, and the corpus figures (metrics.json)."""
    scan = scan_corpus(documents(), cfg.validate_, cfg.split)
    train_texts = (d["text"] for d in documents() if assign_split(d["text"], cfg.split) == "train")
    frame = document_frame(scan.sample, train_texts, cfg.validate_)
    report = run_suite(scan.counters_frame(), document_batches(frame, cfg), cfg.validate_, scan.examples)
    return report, corpus_metrics(scan, frame)


def document_batches(documents: pd.DataFrame, cfg: Config) -> list[tuple[str, pd.DataFrame, list]]:
    """The sampled documents and their expectations: one batch, or, when a source of the mixture
    sets its own thresholds (data.sources[*].validate), one batch per source with its own."""
    sources = cfg.data.sources
    if not any(s.validate_ for s in sources):
        return [("documents", documents, document_expectations(cfg.validate_))]
    batches = []
    for number, s in enumerate(sources, 1):
        rows = documents[documents["mixture"] == s.label].reset_index(drop=True)
        if rows.empty:  # a source too small to be sampled: its documents are still counted
            log.warning("validate: no sampled document of source %s; raise validate.sample_documents",
                        s.label)
            continue
        thresholds = cfg.validate_.model_copy(update=s.validate_)
        # GX names become file names: no slashes; the number keeps two similar labels apart.
        name = f"documents of source {number} {BATCH_UNSAFE.sub('_', s.label)}"
        batches.append((name, rows, document_expectations(thresholds, f"{s.label}: ")))
    return batches


def document_expectations(validate: ValidateConfig, about: str = "") -> list:
    """The checks of sampled documents; `about` opens each description (which source)."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnMedianToBeBetween(
            column="chars", min_value=validate.min_median_chars,
            description=about + f"median length at least {validate.min_median_chars}"),
        gxe.ExpectColumnValuesToBeBetween(
            column="letter_share", min_value=validate.min_letter_share, mostly=0.95,
            description=about + f"text, not symbols: letters at least {validate.min_letter_share:.0%} of "
                        "visible characters (95% of documents)"),
        gxe.ExpectColumnMeanToBeBetween(
            column="common_word_share", min_value=validate.min_common_word_share,
            description=about + f"English prose: common words at least {validate.min_common_word_share:.0%} "
                        "of words on average"),
        gxe.ExpectColumnValuesToBeInSet(
            column="near_duplicate", value_set=[False], mostly=1 - validate.max_near_duplicate_ratio,
            description=about + f"at most {validate.max_near_duplicate_ratio:.0%} near duplicates "
                        f"(word 5-gram Jaccard >= {validate.near_duplicate_jaccard})"),
        gxe.ExpectColumnValuesToBeBetween(
            column="train_overlap", max_value=validate.contamination_overlap,
            mostly=1 - validate.max_contaminated_share,
            description=about + "test not copied from train: at most "
                        f"{validate.max_contaminated_share:.0%} of test documents share over "
                        f"{validate.contamination_overlap:.0%} of their {validate.contamination_ngram}-grams "
                        "with the training split"),
    ]


def run_suite(counters: pd.DataFrame, documents: list[tuple[str, pd.DataFrame, list]],
              validate: ValidateConfig, examples: dict[str, list[str]]) -> ValidationReport:
    """The corpus counters and each batch of `documents` (document_batches) through their suites."""
    import great_expectations as gx

    # GX logs setup chatter at INFO, one module even forcing its own level.
    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")  # in-memory: nothing written but our reports
    context.variables.progress_bars = {"globally": False}
    docs_dir = (validate.report_dir / DOCS_DIR).resolve()
    # The ephemeral context ships a Data Docs site in a temp dir; point it at reports/.
    context.update_data_docs_site(site_name="local_site", site_config={
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    source = context.data_sources.add_pandas("corpus")
    definitions, frames = [], {}
    for name, frame, suite in [("corpus", counters, corpus_expectations(validate)), *documents]:
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        definitions.append(context.validation_definitions.add(gx.ValidationDefinition(
            name=name, data=batch, suite=context.suites.add(gx.ExpectationSuite(name, expectations=suite)))))
        frames[name] = frame
    results = []
    for definition in definitions:  # one checkpoint per batch: each takes its own dataframe
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=definition.name, validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            result_format={"result_format": "SUMMARY", "unexpected_index_column_names": ["id"]}
            if definition.name != "corpus" else {"result_format": "SUMMARY"}))
        run = checkpoint.run(batch_parameters={"dataframe": frames[definition.name]})
        results.append(next(iter(run.run_results.values())))

    result_path = validate.report_dir / RESULT_FILE
    with atomic_path(result_path) as tmp:
        tmp.write_text(json.dumps([r.to_json_dict() for r in results], indent=2))
    ids = {"corpus": []} | {name: list(frame["id"]) for name, frame, _ in documents}
    checks = [to_check(r, name, ids[name], examples)
              for name, result in zip(frames, results, strict=True) for r in result.results]
    sampled = sum(len(frame) for _, frame, _ in documents)
    return ValidationReport(all(r.success for r in results), checks, sampled, result_path,
                            docs_dir / "index.html")


def to_check(r, batch: str, ids: list[str], examples: dict[str, list[str]]) -> Check:
    """One expectation's outcome, with how much broke it and which documents."""
    res = r.result or {}
    column = r.expectation_config.kwargs.get("column")
    if batch == "corpus":  # one row of counters: the counter is the measure
        broken = f"observed {fmt(res.get('partial_unexpected_list', [None])[0])}" \
            if res.get("unexpected_count") else "ok"
        named = examples.get(column, [])
    elif res.get("unexpected_count") is not None:
        checked = res.get("element_count", 0) - res.get("missing_count", 0)  # nulls are not checked
        broken = f"{res['unexpected_count']} of {checked} documents broke it"
        named = [row["id"] if isinstance(row, dict) else ids[row]
                 for row in (res.get("partial_unexpected_index_list") or [])[:EXAMPLES]]
    else:
        broken, named = f"observed {fmt(res.get('observed_value'))}", []
    return Check(r.expectation_config.type, r.expectation_config.description or "", bool(r.success),
                 broken, tuple(named) if not r.success else ())


def fmt(value) -> str:
    return f"{float(value):.4g}" if isinstance(value, int | float | np.number) else repr(value)
