"""Stage 2, validate: text-aware Great Expectations checks over the ingested documents.

Two GX batches, both in the Data Docs under reports/validation/:
- `corpus`: one row of counters streamed over every document, for the rules no sample may miss
  (row count, length bounds, control characters, invalid UTF-8, exact duplicates);
- `documents`: one row per document, all of them or a seeded sample of validate.sample_documents,
  with text features for the distribution checks (median length, share of letters, share of
  common English words, near duplicates) and, for test documents, the share of their n-grams
  that also occur in the training split (train/test contamination).

Corpus figures go to reports/validation/metrics.json (the train stage logs them to MLflow). A
failed check raises ValidationFailed naming each expectation, how much broke it and example
document ids, so nothing downstream runs.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lm_pipeline.config import Config, ValidateConfig
from lm_pipeline.data.documents import documents_path, read_documents
from lm_pipeline.data.quality import DOCS_DIR, METRICS_FILE, RESULT_FILE
from lm_pipeline.data.split import assign_split, text_digest
from lm_pipeline.io import atomic_path, write_json

log = logging.getLogger(__name__)

CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 controls but \t \n \r
INVALID_UTF8 = re.compile(r"[\ud800-\udfff\ufffd]")  # undecodable bytes (surrogates) or U+FFFD
WORD = re.compile(r"\w+")
# The most frequent English words: prose has many, code, tables and binary junk almost none.
COMMON_WORDS = frozenset(
    "the of and to a in is it that for as with was on be by this are or not from at an which "
    "but have has can if will all one their they its there been more so when no than other".split())
EXAMPLES = 5  # document ids named per broken rule
SAMPLE_CHARS = 100_000  # of each sampled document, for near-duplicate and n-gram checks


class ValidationFailed(RuntimeError):
    """The corpus broke the suite; the message lists each failed expectation."""


@dataclass(frozen=True)
class Check:
    expectation: str
    description: str
    success: bool
    broken: str  # how much broke it: "3 of 120 documents", "observed 0.41"
    examples: tuple[str, ...] = ()

    def describe(self) -> str:
        named = f" (e.g. {', '.join(self.examples)})" if self.examples else ""
        return f"{self.expectation} ({self.description}): {self.broken}{named}"


@dataclass(frozen=True)
class ValidationReport:
    success: bool
    checks: list[Check]
    rows: int
    result_path: Path
    data_docs: Path
    metrics: dict = field(default_factory=dict)


def run(cfg: Config) -> ValidationReport:
    source = documents_path(cfg.data.raw_dir)
    scan = scan_corpus(read_documents(source), cfg)
    documents = document_frame(scan.sample, source, cfg)
    report = run_suite(scan.counters_frame(), document_batches(documents, cfg), cfg.validate_, scan.examples)
    write_json(cfg.validate_.report_dir / METRICS_FILE, corpus_metrics(scan, documents))
    if not report.success:
        failed = "\n  - ".join(c.describe() for c in report.checks if not c.success)
        raise ValidationFailed(
            f"validate: {source} failed {sum(not c.success for c in report.checks)} of "
            f"{len(report.checks)} expectations:\n  - {failed}\n"
            f"Data Docs: {report.data_docs}")
    log.info("validate: %d documents (%d sampled) passed %d expectations; Data Docs: %s",
             scan.documents, len(documents), len(report.checks), report.data_docs)
    return report


# --- one streaming pass: counters over every document, and a bounded sample -----------------

@dataclass
class CorpusScan:
    documents: int = 0
    characters: int = 0
    bad_length: int = 0
    control_heavy: int = 0
    invalid_utf8: int = 0
    duplicates: int = 0
    mixture_characters: Counter = field(default_factory=Counter)  # by data.sources name
    sample: list[dict] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def counters_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{
            "documents": self.documents, "bad_length": self.bad_length,
            "control_heavy": self.control_heavy, "invalid_utf8": self.invalid_utf8,
            "duplicate_share": self.duplicates / max(self.documents, 1)}])

    def note(self, rule: str, doc_id: str) -> None:
        ids = self.examples.setdefault(rule, [])
        if len(ids) < EXAMPLES:
            ids.append(doc_id)


def scan_corpus(docs: Iterator[dict], cfg: Config) -> CorpusScan:
    """Count rule breaks over every document; keep a seeded reservoir sample of the rest."""
    v = cfg.validate_
    scan, seen, rng = CorpusScan(), set(), random.Random(v.seed)
    for doc in docs:
        text, doc_id = doc["text"], str(doc["id"])
        scan.documents += 1
        scan.characters += len(text)
        if "mixture" in doc:
            scan.mixture_characters[doc["mixture"]] += len(text)
        if not v.min_chars <= len(text) <= v.max_chars:
            scan.bad_length += 1
            scan.note("bad_length", doc_id)
        if control_share(text) > v.max_control_share:
            scan.control_heavy += 1
            scan.note("control_heavy", doc_id)
        if INVALID_UTF8.search(text):
            scan.invalid_utf8 += 1
            scan.note("invalid_utf8", doc_id)
        digest = text_digest(text)
        if digest in seen:
            scan.duplicates += 1
            scan.note("duplicate_share", doc_id)
            continue  # a copy adds nothing to the sample
        seen.add(digest)
        keep = {"id": doc_id, "text": text[:SAMPLE_CHARS], "chars": len(text),
                "split": assign_split(text, cfg.split), "mixture": doc.get("mixture")}
        unique = len(seen)
        if unique <= v.sample_documents:
            scan.sample.append(keep)
        elif (slot := rng.randrange(unique)) < v.sample_documents:
            scan.sample[slot] = keep
    return scan


def control_share(text: str) -> float:
    return len(CONTROL_CHARS.findall(text)) / max(len(text), 1)


# --- per-document features of the sample ----------------------------------------------------

def document_frame(sample: list[dict], source: Path, cfg: Config) -> pd.DataFrame:
    v = cfg.validate_
    texts = [row["text"] for row in sample]
    frame = pd.DataFrame({
        "id": [row["id"] for row in sample],
        "split": [row["split"] for row in sample],
        "mixture": [row["mixture"] for row in sample],
        "chars": [row["chars"] for row in sample],
        "letter_share": [letter_share(t) for t in texts],
        "common_word_share": [common_word_share(t) for t in texts],
        "near_duplicate": near_duplicates(texts, v.near_duplicate_jaccard, v.seed),
    })
    frame["train_overlap"] = train_overlap(frame, texts, source, cfg)
    return frame


def letter_share(text: str) -> float:
    visible = sum(not c.isspace() for c in text)
    return sum(c.isalpha() for c in text) / max(visible, 1)


def common_word_share(text: str) -> float:
    words = WORD.findall(text.lower())
    return sum(w in COMMON_WORDS for w in words) / max(len(words), 1)


def shingles(text: str, n: int) -> np.ndarray:
    """Distinct hashes of the word n-grams of a text (one for a text shorter than n words).

    Deterministic across processes (unlike hash()), so samples and verdicts are reproducible."""
    words = WORD.findall(text.lower()) or [""]
    ids = np.fromiter((word_hash(w) for w in words), dtype=np.uint64, count=len(words))
    count = max(len(ids) - n + 1, 1)
    grams = np.zeros(count, dtype=np.uint64)
    for k in range(min(n, len(ids))):  # polynomial hash of each window, wrapping mod 2**64
        grams = grams * np.uint64(0x100000001B3) + ids[k:k + count]
    return np.unique(grams)


@functools.lru_cache(maxsize=1 << 20)
def word_hash(word: str) -> int:
    return int.from_bytes(text_digest(word), "little")


def near_duplicates(texts: list[str], jaccard: float, seed: int, perms: int = 64, bands: int = 16
                    ) -> list[bool]:
    """MinHash + LSH: True for a text whose word 5-grams overlap an earlier text's by `jaccard`."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 63, size=perms, dtype=np.uint64) | np.uint64(1)  # odd: a bijection
    b = rng.integers(0, 1 << 63, size=perms, dtype=np.uint64)
    # One random permutation of the hash space per column (multiply-add, wrapping mod 2**64).
    signatures = np.stack([(np.outer(shingles(t, 5), a) + b).min(axis=0) for t in texts]) \
        if texts else np.zeros((0, perms), np.uint64)
    rows = perms // bands
    buckets: dict[tuple, list[int]] = {}
    flagged = [False] * len(texts)
    for i, sig in enumerate(signatures):
        for band in range(bands):
            key = (band, sig[band * rows:(band + 1) * rows].tobytes())
            for j in buckets.get(key, []):
                if not flagged[i] and np.mean(signatures[j] == sig) >= jaccard:
                    flagged[i] = True
            buckets.setdefault(key, []).append(i)
    return flagged


def train_overlap(frame: pd.DataFrame, texts: list[str], source: Path, cfg: Config) -> list:
    """For each sampled test document, the share of its word n-grams found anywhere in the
    training split (streamed over the whole corpus); None for other documents."""
    n = cfg.validate_.contamination_ngram
    test = {i: shingles(texts[i], n) for i in np.flatnonzero(frame["split"] == "test")}
    if not test:
        return [None] * len(frame)
    wanted = np.unique(np.concatenate(list(test.values())))
    in_train = np.zeros(len(wanted), dtype=bool)
    for doc in read_documents(source):
        if assign_split(doc["text"], cfg.split) == "train":
            in_train |= np.isin(wanted, shingles(doc["text"], n), assume_unique=True)
    found = wanted[in_train]
    overlap = [None] * len(frame)
    for i, grams in test.items():
        overlap[i] = float(np.isin(grams, found, assume_unique=True).mean())
    return overlap


# --- the suite --------------------------------------------------------------------------------

def corpus_expectations(cfg: ValidateConfig) -> list:
    import great_expectations.expectations as gxe

    def at_most(column, value, description):
        return gxe.ExpectColumnValuesToBeBetween(column=column, max_value=value, description=description)

    return [
        gxe.ExpectColumnValuesToBeBetween(column="documents", min_value=cfg.min_rows,
                                          description=f"at least {cfg.min_rows} documents"),
        at_most("bad_length", 0, f"text length in [{cfg.min_chars}, {cfg.max_chars}] (non-empty)"),
        at_most("control_heavy", 0, f"control characters at most {cfg.max_control_share:.1%} of a text"),
        at_most("invalid_utf8", 0, "valid UTF-8"),
        at_most("duplicate_share", cfg.max_duplicate_ratio,
                f"at most {cfg.max_duplicate_ratio:.0%} duplicate texts"),
    ]


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


def document_expectations(cfg: ValidateConfig, about: str = "") -> list:
    """The checks of sampled documents; `about` opens each description (which source)."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnMedianToBeBetween(
            column="chars", min_value=cfg.min_median_chars,
            description=about + f"median length at least {cfg.min_median_chars}"),
        gxe.ExpectColumnValuesToBeBetween(
            column="letter_share", min_value=cfg.min_letter_share, mostly=0.95,
            description=about + f"text, not symbols: letters at least {cfg.min_letter_share:.0%} of "
                        "visible characters (95% of documents)"),
        gxe.ExpectColumnMeanToBeBetween(
            column="common_word_share", min_value=cfg.min_common_word_share,
            description=about + f"English prose: common words at least {cfg.min_common_word_share:.0%} "
                        "of words on average"),
        gxe.ExpectColumnValuesToBeInSet(
            column="near_duplicate", value_set=[False], mostly=1 - cfg.max_near_duplicate_ratio,
            description=about + f"at most {cfg.max_near_duplicate_ratio:.0%} near duplicates "
                        f"(word 5-gram Jaccard >= {cfg.near_duplicate_jaccard})"),
        gxe.ExpectColumnValuesToBeBetween(
            column="train_overlap", max_value=cfg.contamination_overlap,
            mostly=1 - cfg.max_contaminated_share,
            description=about + f"test not copied from train: at most {cfg.max_contaminated_share:.0%} of "
                        f"test documents share over {cfg.contamination_overlap:.0%} of their "
                        f"{cfg.contamination_ngram}-grams with the training split"),
    ]


def run_suite(counters: pd.DataFrame, documents: list[tuple[str, pd.DataFrame, list]],
              cfg: ValidateConfig, examples: dict[str, list[str]]) -> ValidationReport:
    """The corpus counters and each batch of `documents` (document_batches) through their suites."""
    import great_expectations as gx

    # GX logs setup chatter at INFO, one module even forcing its own level.
    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)
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
    source = context.data_sources.add_pandas("corpus")
    definitions, frames = [], {}
    for name, frame, suite in [("corpus", counters, corpus_expectations(cfg)), *documents]:
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

    result_path = cfg.report_dir / RESULT_FILE
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


METRIC_UNSAFE = re.compile(r"[^\w./ -]")  # what an MLflow metric name may not hold
BATCH_UNSAFE = re.compile(r"[^\w.-]+")  # what a Great Expectations batch name may not hold


def corpus_metrics(scan: CorpusScan, documents: pd.DataFrame) -> dict:
    overlap = documents["train_overlap"].dropna()
    return {
        "documents": scan.documents,
        "characters": scan.characters,
        "sampled_documents": len(documents),
        "duplicate_share": scan.duplicates / max(scan.documents, 1),
        "near_duplicate_share": float(documents["near_duplicate"].mean()) if len(documents) else 0.0,
        "median_chars": float(documents["chars"].median()) if len(documents) else 0.0,
        "letter_share": float(documents["letter_share"].mean()) if len(documents) else 0.0,
        "common_word_share": float(documents["common_word_share"].mean()) if len(documents) else 0.0,
        "test_train_overlap_max": float(overlap.max()) if len(overlap) else 0.0,
        "control_heavy_documents": scan.control_heavy,
        "invalid_utf8_documents": scan.invalid_utf8,
        # a mixture's sources, as shares of the characters (data.sources' weights are the goal)
        **{"mixture_share/" + METRIC_UNSAFE.sub("_", name): chars / max(scan.characters, 1)
           for name, chars in scan.mixture_characters.items()},
    }
