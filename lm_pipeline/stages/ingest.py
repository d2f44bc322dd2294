"""Stage 1, ingest: materialize the corpus as documents {id, text, source} in data/raw/.

Sources (data/sources/): the built-in `python-docs` corpus (the prose that ships with the running
Python), or a .txt / .jsonl / .parquet file or a folder of them, local or in object storage, read a
line or a batch at a time; or several of them mixed by weight (data.sources). A Hugging Face
`datasets` folder written by `save_to_disk` is a folder of .arrow files with a `text` column, read
as data: no dataset script or pickled state of it is loaded or run.

Broken input is found there and named by file (and line): unreadable files, symlink loops, binary
data, text that is not UTF-8, malformed or text-less records. By default it stops the stage
(`data.on_bad_file` / `data.on_bad_record: fail`); with `skip` it is left out and listed in
reports/ingest.json. Either way nothing half-written is left behind.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lm_pipeline.config import Config, corpus_description
from lm_pipeline.data.documents import documents_path
from lm_pipeline.data.sources.corpus import iter_documents
from lm_pipeline.data.sources.mixture import Mixture
from lm_pipeline.data.sources.problems import IngestError, Problem
from lm_pipeline.io import atomic_path, remove_leftovers, write_json

log = logging.getLogger(__name__)

REPORT_EXAMPLES = 100  # skipped inputs listed by name in the report (all are counted)


@dataclass(frozen=True)
class IngestResult:
    path: Path
    documents: int
    characters: int
    skipped: tuple[Problem, ...] = ()


def run(cfg: Config) -> IngestResult:
    out = documents_path(cfg.data.raw_dir)
    remove_leftovers(out)
    policy = {"file": cfg.data.on_bad_file, "record": cfg.data.on_bad_record}
    count = chars = 0
    skipped = Skipped()
    described = corpus_description(cfg.data.source, cfg.data.sources)
    mixture = Mixture(cfg.data.sources, cfg.data.mix_seed, cfg.data.min_doc_chars,
                      cfg.data.max_document_bytes) if cfg.data.sources else None
    items = mixture.documents() if mixture else \
        iter_documents(cfg.data.source, cfg.data.min_doc_chars, cfg.data.max_document_bytes)
    with atomic_path(out) as tmp, tmp.open("w", encoding="utf-8") as f:
        for item in items:
            if isinstance(item, Problem):
                if policy[item.scope] == "fail":
                    raise IngestError(f"{item} (data.on_bad_{item.scope}: skip to skip and report it)")
                skipped.add(item)
                continue
            # JSON escapes can carry lone surrogates ("\ud800"): ensure_ascii keeps them writable,
            # and validation reports them as invalid UTF-8.
            f.write(json.dumps(item, ensure_ascii=True) + "\n")
            count += 1
            chars += len(item["text"])
        if count == 0:
            raise IngestError(f"{described}: no documents"
                              + (f"; all {skipped.count} inputs were skipped, first: {skipped.examples[0]}"
                                 if skipped.count else ""))
    write_report(cfg.data.report_file, count, chars, skipped, mixture.stats if mixture else None)
    for problem in skipped.examples[:10]:
        log.warning("ingest: skipped %s", problem)
    log.info("ingest: %d documents, %d characters from %s -> %s (%d inputs skipped)",
             count, chars, described, out, skipped.count)
    for stats in mixture.stats if mixture else ():
        log.info("ingest: %s: %d of %d documents, %.1f%% of the characters (weight %.1f%%)", stats["name"],
                 stats["documents"], stats["documents_read"], 100 * stats["share"], 100 * stats["weight"])
    return IngestResult(out, count, chars, tuple(skipped.examples))


class Skipped:
    """What was skipped: counted by reason, the first REPORT_EXAMPLES kept by name (a corpus of
    millions of bad records must not grow a list of millions)."""

    def __init__(self):
        self.count, self.by_reason, self.examples = 0, Counter(), []

    def add(self, problem: Problem) -> None:
        self.count += 1
        self.by_reason[problem.reason.split(" (")[0]] += 1
        if len(self.examples) < REPORT_EXAMPLES:
            self.examples.append(problem)


def write_report(path: Path, documents: int, characters: int, skipped: Skipped,
                 mixture: list[dict] | None = None) -> None:
    write_json(path, {
        "documents": documents,
        "characters": characters,
        "skipped": skipped.count,
        "skipped_by_reason": dict(skipped.by_reason),
        "skipped_examples": [{"where": p.where, "reason": p.reason} for p in skipped.examples],
        **({"mixture": mixture} if mixture else {}),
    })
