"""A corpus profiled for validation in one streaming pass: counters over every document (the rules
no sample may miss), a seeded sample of the rest, and the sample's per-document features."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lm_pipeline.config import SplitConfig, ValidateConfig
from lm_pipeline.data.features import (
    INVALID_UTF8,
    common_word_share,
    control_share,
    letter_share,
    near_duplicates,
    overlap_shares,
)
from lm_pipeline.data.split import assign_split, text_digest

EXAMPLES = 5  # document ids named per broken rule
SAMPLE_CHARS = 100_000  # of each sampled document, for near-duplicate and n-gram checks
METRIC_UNSAFE = re.compile(r"[^\w./ -]")  # what an MLflow metric name may not hold


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


def scan_corpus(docs: Iterator[dict], validate: ValidateConfig, split: SplitConfig) -> CorpusScan:
    """Count rule breaks over every document; keep a seeded reservoir sample of the rest."""
    scan, seen, rng = CorpusScan(), set(), random.Random(validate.seed)
    for doc in docs:
        text, doc_id = doc["text"], str(doc["id"])
        scan.documents += 1
        scan.characters += len(text)
        if "mixture" in doc:
            scan.mixture_characters[doc["mixture"]] += len(text)
        if not validate.min_chars <= len(text) <= validate.max_chars:
            scan.bad_length += 1
            scan.note("bad_length", doc_id)
        if control_share(text) > validate.max_control_share:
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
                "split": assign_split(text, split), "mixture": doc.get("mixture")}
        unique = len(seen)
        if unique <= validate.sample_documents:
            scan.sample.append(keep)
        elif (slot := rng.randrange(unique)) < validate.sample_documents:
            scan.sample[slot] = keep
    return scan


def document_frame(sample: list[dict], train_texts: Iterable[str], validate: ValidateConfig) -> pd.DataFrame:
    """The sampled documents' features; `train_texts` streams the whole training split, against
    which each sampled test document's n-grams are checked (train_overlap; None for others)."""
    texts = [row["text"] for row in sample]
    frame = pd.DataFrame({
        "id": [row["id"] for row in sample],
        "split": [row["split"] for row in sample],
        "mixture": [row["mixture"] for row in sample],
        "chars": [row["chars"] for row in sample],
        "letter_share": [letter_share(t) for t in texts],
        "common_word_share": [common_word_share(t) for t in texts],
        "near_duplicate": near_duplicates(texts, validate.near_duplicate_jaccard, validate.seed),
    })
    test = {i: texts[i] for i in np.flatnonzero(frame["split"] == "test")}
    shares = overlap_shares(test, train_texts, validate.contamination_ngram) if test else {}
    frame["train_overlap"] = [shares.get(i) for i in range(len(frame))]
    return frame


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
