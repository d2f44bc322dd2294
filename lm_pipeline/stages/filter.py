"""Stage 3, filter: remove or redact documents one by one, then duplicates across the corpus.

Streams data/raw/documents.jsonl through filter.steps in order (data/screen.py: language, the
Gopher, C4 and FineWeb heuristics as datatrove implements them, personal data), on all cores or
as Ray Data tasks on a cluster (the same rule as data.preprocess_on), then removes exact and near
duplicates (data/dedup.py), the first copy in corpus order kept. Memory stays flat: documents
stream, and dedup keeps 8 bytes a document per key in a file.

filter.output_dir/ holds documents.jsonl (what preprocess reads) and removed.jsonl (every removed
document with the step and the reason: nothing is lost); filter.report_dir/ the funnel
(data/funnel.py). The output is a function of the corpus and the filter section only, so a
threshold that changes nothing leaves it byte for byte the same and DVC reruns nothing after it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lm_pipeline.config import Config
from lm_pipeline.data.dedup import KeyFile, duplicate_of
from lm_pipeline.data.documents import documents_path
from lm_pipeline.data.funnel import Funnel
from lm_pipeline.data.parallel import line_batches, local_map, ray_map_lines, use_ray
from lm_pipeline.data.quality import check_validation_passed, record_source
from lm_pipeline.data.screen import COLUMNS, DEDUP_STEPS, screen_lines
from lm_pipeline.hashing import file_sha256
from lm_pipeline.io import atomic_path, json_line, remove_leftovers
from lm_pipeline.progress import Progress

log = logging.getLogger(__name__)

REMOVED_FILE = "removed.jsonl"
SCRATCH = ("candidates.jsonl", "keys.u64")  # what the steps kept and its dedup keys, until dedup
LOCAL_BATCH_CHARS = 1 << 20  # text per process-pool task: many documents, well under a second
RAY_BATCH_DOCUMENTS = 512


@dataclass(frozen=True)
class FilterResult:
    path: Path
    documents_in: int
    documents_kept: int


def run(cfg: Config) -> FilterResult:
    source, out = documents_path(cfg.data.raw_dir), cfg.filter.output_dir
    corpus_sha256 = file_sha256(source)
    check_validation_passed(cfg.validate_.report_dir, cfg.validate_.required, corpus_sha256, source, "filter")
    funnel = Funnel(cfg.filter.steps, cfg.filter.examples)
    remove_leftovers(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        candidates, keys = screen(source, cfg, tmp, funnel)
        write_unique(candidates, keys, cfg.filter.steps, tmp, funnel)
        for scratch in SCRATCH:
            (tmp / scratch).unlink()
        record_source(documents_path(tmp), corpus_sha256)
        funnel.write(cfg.filter.report_dir)
        if not funnel.metrics()["documents_kept"]:  # refused whole: no empty corpus downstream
            raise ValueError(f"filter: the steps removed all {funnel.documents} documents of {source} "
                             f"(why: {cfg.filter.report_dir / 'report.md'}); loosen filter.* in params.yaml")
    metrics = funnel.metrics()
    log.info("filter: kept %d of %d documents (%d of %d characters) -> %s; funnel in %s",
             metrics["documents_kept"], metrics["documents_in"], metrics["characters_kept"],
             metrics["characters_in"], documents_path(out), cfg.filter.report_dir / "report.md")
    return FilterResult(out, metrics["documents_in"], metrics["documents_kept"])


def screen(source: Path, cfg: Config, tmp: Path, funnel: Funnel):
    """The document steps over the corpus: candidates.jsonl and their dedup keys (a KeyFile);
    what the steps remove goes to removed.jsonl."""
    settings = cfg.filter.model_dump(mode="json")
    if use_ray(cfg, source):
        batches = ray_map_lines("filter: screening", source, screen_lines, {"cfg": settings},
                                cfg.ray_address, RAY_BATCH_DOCUMENTS)
    else:
        batches = local_map(functools.partial(screen_local, cfg=settings),
                            line_batches(source, LOCAL_BATCH_CHARS))
    key_file = KeyFile(tmp / "keys.u64", dedup_width(cfg))
    progress = Progress("filter: screening", total=os.path.getsize(source), unit="bytes")
    with open(tmp / "candidates.jsonl", "w", encoding="utf-8") as kept, \
            open(tmp / REMOVED_FILE, "w", encoding="utf-8") as removed, progress:
        for batch in batches:
            for values in zip(*(batch[c] for c in COLUMNS), strict=True):
                row = dict(zip(COLUMNS, values, strict=True))
                trimmed, doc = json.loads(row["trimmed"]), json.loads(row["line"])
                funnel.read(len(doc["text"]) + sum(trimmed.values()), trimmed, json.loads(row["pii"]))
                if row["step"]:
                    funnel.remove(row["step"], row["reason"], doc)
                    removed.write(row["line"] + "\n")
                else:
                    kept.write(row["line"] + "\n")
                    key_file.append(np.frombuffer(row["keys"], dtype=np.uint64))
                progress.update(int(row["size"]))
    return tmp / "candidates.jsonl", key_file.close()


def screen_local(lines: list[str], cfg: dict) -> dict:
    return screen_lines({"text": np.array(lines, dtype=object)}, cfg)


def dedup_width(cfg: Config) -> int:
    """Keys a document: one for exact_dedup, one a band for near_dedup (data/dedup.py)."""
    steps = cfg.filter.steps
    return ("exact_dedup" in steps) + ("near_dedup" in steps) * cfg.filter.near_dedup.bands


def write_unique(candidates: Path, keys: KeyFile, steps: list[str], tmp: Path, funnel: Funnel) -> None:
    """documents.jsonl: the candidates but duplicates, which go to removed.jsonl naming the first copy."""
    exact = "exact_dedup" in steps  # the key columns: the exact key first, then the bands
    columns = {"exact_dedup": range(0, 1), "near_dedup": range(int(exact), keys.width)}
    # dedup step -> the first earlier copy of each candidate (-1: none)
    first = {step: duplicate_of(keys, columns[step]) for step in steps if step in DEDUP_STEPS}
    wanted = {int(i) for of in first.values() for i in of[of >= 0]}
    ids: dict[int, str] = {}
    with open(candidates, encoding="utf-8") as f, \
            open(documents_path(tmp), "w", encoding="utf-8") as out, \
            open(tmp / REMOVED_FILE, "a", encoding="utf-8") as removed:
        for i, line in enumerate(f):
            doc = json.loads(line)
            if i in wanted:
                ids[i] = str(doc.get("id", i))
            step = next((s for s, of in first.items() if of[i] >= 0), None)
            if step is None:
                out.write(line)
                continue
            kind = "exact" if step == "exact_dedup" else "near"
            reason = f"{kind} duplicate of {ids[int(first[step][i])]}"
            funnel.remove(step, reason, doc)
            removed.write(json_line(doc | {"filter": step, "reason": reason}) + "\n")
