"""The checks a drop passes before anything is trained on it, alone and against the corpus:

- read and validated as the corpus is (ingest's readers, refusing any bad file or record; the
  validate stage's Great Expectations suites, with any number of documents allowed);
- repeats: the share of its documents that repeat the corpus (or each other) exactly or nearly
  (MinHash, validate.near_duplicate_jaccard) may not exceed ct.max_duplicate_share;
- contamination: test-split documents of the corpus found in the drop (their word n-grams
  covered by it, validate.contamination_ngram / contamination_overlap) may not exceed
  ct.max_leaked_test_documents: training on them would inflate every later evaluation.

A drop that fails is copied, with its report, to ct.quarantine_dir: kept, never deleted, never
trained on.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lm_pipeline.config import Config
from lm_pipeline.continuous.drops import Drop, links_leaving
from lm_pipeline.data.documents import read_documents
from lm_pipeline.data.expectations import check_documents
from lm_pipeline.data.features import near_duplicates, overlap_shares
from lm_pipeline.data.sources.corpus import iter_documents
from lm_pipeline.data.sources.problems import IngestError, Problem
from lm_pipeline.data.split import assign_split, text_digest
from lm_pipeline.io import filesystem, is_url, write_json
from lm_pipeline.text import terminal_safe

log = logging.getLogger(__name__)

REPORT_FILE = "hygiene.json"


@dataclass
class Hygiene:
    drop: str
    digest: str
    documents: int = 0
    repeats: int = 0  # documents repeating the corpus, or an earlier one of the drop, exactly or nearly
    leaked_test_documents: list[str] = field(default_factory=list)  # ids of the corpus's test documents
    problems: list[str] = field(default_factory=list)  # why the drop is refused, one line each

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def repeat_share(self) -> float:
        return self.repeats / self.documents if self.documents else 0.0


def check_drop(cfg: Config, drop: Drop, corpus: Path, work: Path) -> tuple[Hygiene, list[dict]]:
    """The drop's report, checked against the documents file `corpus`, and its documents (none
    when it could not be read). Data Docs go to `work`."""
    report = Hygiene(drop.name, drop.digest)
    try:
        documents = read_drop_documents(cfg, drop)
    except IngestError as err:
        report.problems.append(str(err))
        return report, []
    report.documents = len(documents)
    checks = cfg.validate_.model_copy(update={"report_dir": work / "validation", "min_rows": 1})
    validation, _ = check_documents(lambda: iter(documents), cfg.model_copy(update={"validate_": checks}))
    report.problems += [f"validation: {c.describe()}" for c in validation.checks if not c.success]
    check_against_corpus(cfg, [d["text"] for d in documents], corpus, report)
    return report, documents


def read_drop_documents(cfg: Config, drop: Drop) -> list[dict]:
    """Every document of the drop, read as ingest reads a corpus; a bad file or record refuses
    the whole drop (half a drop is not what was sent)."""
    if leaving := links_leaving(drop.url):
        raise IngestError(f"drop {drop.name}: {terminal_safe(', '.join(leaving[:5]))}: a link leading "
                          "outside the drop (never followed: what it points at is not the drop's to send)")
    documents = []
    for item in iter_documents(drop.url, cfg.data.min_doc_chars, cfg.data.max_document_bytes):
        if isinstance(item, Problem):
            raise IngestError(f"drop {drop.name}: {item}")
        documents.append(item)
    if not documents:
        raise IngestError(f"drop {drop.name}: no documents")
    return documents


def check_against_corpus(cfg: Config, texts: list[str], corpus_file: Path, report: Hygiene) -> None:
    corpus = list(read_documents(corpus_file))
    report.repeats = count_repeats([d["text"] for d in corpus], texts, cfg.validate_.near_duplicate_jaccard,
                                   cfg.ct.seed)
    if report.repeat_share > cfg.ct.max_duplicate_share:
        report.problems.append(f"{report.repeats} of {report.documents} documents "
                               f"({report.repeat_share:.0%}) repeat the corpus, exactly or nearly "
                               f"(ct.max_duplicate_share {cfg.ct.max_duplicate_share:.0%})")
    # Pairs, not a dict by id: ids repeat in a corpus ingested from files that each count from 0.
    test = [(d["id"], d["text"]) for d in corpus if assign_split(d["text"], cfg.split) == "test"]
    report.leaked_test_documents = leaked(test, texts, cfg.validate_.contamination_ngram,
                                          cfg.validate_.contamination_overlap)
    if len(report.leaked_test_documents) > cfg.ct.max_leaked_test_documents:
        shown = ", ".join(report.leaked_test_documents[:5])
        report.problems.append(f"the drop contains {len(report.leaked_test_documents)} test-split documents "
                               f"of the corpus ({shown}; ct.max_leaked_test_documents "
                               f"{cfg.ct.max_leaked_test_documents}): training on them would inflate "
                               "every later evaluation")


def count_repeats(corpus: list[str], texts: list[str], jaccard: float, seed: int) -> int:
    """Drop documents equal to a corpus document or an earlier drop document, or near one."""
    seen = {text_digest(t) for t in corpus}
    exact = []
    for text in texts:
        exact.append(text_digest(text) in seen)
        seen.add(text_digest(text))
    near = near_duplicates(corpus + texts, jaccard, seed)[len(corpus):]
    return sum(e or n for e, n in zip(exact, near, strict=True))


def leaked(test: list[tuple[str, str]], texts: list[str], ngram: int, overlap: float) -> list[str]:
    """Ids of the test documents ((id, text) pairs) whose word n-grams the drop's texts cover by
    `overlap` or more."""
    shares = overlap_shares({i: text for i, (_, text) in enumerate(test)}, texts, ngram)
    return [test[i][0] for i, share in shares.items() if share >= overlap]


def quarantine(cfg: Config, drop: Drop, report: Hygiene) -> Path:
    """A copy of the drop and its report under ct.quarantine_dir (the original is not touched)."""
    target = Path(cfg.ct.quarantine_dir) / f"{drop.name}-{drop.digest[:12]}"
    if not target.exists():
        if is_url(drop.url):
            fs, path = filesystem(drop.url)
            fs.get(path, str(target), recursive=True)
        else:
            shutil.copytree(drop.url, target, symlinks=True)  # a link is kept as a link, never followed
    write_json(target / REPORT_FILE, asdict(report) | {"passed": report.passed})
    log.warning("ct: drop %s quarantined in %s: %s", drop.name, target, "; ".join(report.problems))
    return target
