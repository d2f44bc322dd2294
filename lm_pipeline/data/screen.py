"""One document through the filter steps that judge a document alone (filter.steps, in order).

    language           py3langid (its model is in the package: numpy arrays, no pickle), keeps
                       filter.language.languages at filter.language.min_confidence
    gopher_quality     datatrove's GopherQualityFilter     (Rae et al. 2021)
    gopher_repetition  datatrove's GopherRepetitionFilter
    c4                 datatrove's C4QualityFilter          (drops lines, or the document)
    fineweb            datatrove's FineWebQualityFilter     (Penedo et al. 2024)
    pii                data/pii.py: redact to placeholders, or drop, per category

The heuristics are datatrove's own code with the thresholds of params.yaml, so our decisions are
the library's. A document the steps keep gets its dedup keys here too (data/dedup.py), so the
corpus-wide steps after them read keys, not texts.

`screen_lines` maps JSONL lines to one column batch, the same on this machine's cores or as a Ray
Data task (data/parallel.py), so the output does not depend on where it ran.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

import numpy as np

from lm_pipeline.config import FilterConfig
from lm_pipeline.data import pii
from lm_pipeline.data.dedup import dedup_keys
from lm_pipeline.io import json_line

DEDUP_STEPS = ("exact_dedup", "near_dedup")  # corpus-wide: they run after the document steps
DATATROVE = {"gopher_quality": "GopherQualityFilter", "gopher_repetition": "GopherRepetitionFilter",
             "c4": "C4QualityFilter", "fineweb": "FineWebQualityFilter"}
COLUMNS = ("line", "step", "reason", "trimmed", "pii", "keys", "size")

# A step: text -> (kept text or None, reason, {pii category: matches}).
Step = Callable[[str], tuple[str | None, str, dict]]


def screen_lines(batch: dict[str, np.ndarray], cfg: dict) -> dict[str, np.ndarray]:
    """documents.jsonl lines -> columns, one entry per document:

        line     the JSON line to write: the document with its kept text, or, when a step removed
                 it, the document as that step saw it with "filter" and "reason" added
        step     the step that removed it ("" when kept)
        trimmed  {step: characters it cut from a kept document} (C4's lines, redactions), as JSON
        pii      {category: matches found}, as JSON
        keys     its dedup keys, uint64 bytes (none when removed)
        size     the input line's length in bytes

    Strings and bytes only: Ray Data would turn dicts into structs of every key and arrays into
    lists on the way back."""
    steps, config = document_steps(json.dumps(cfg, sort_keys=True)), FilterConfig(**cfg)
    out: dict[str, list] = {name: [] for name in COLUMNS}
    for line in batch["text"]:
        doc = json.loads(line)
        text, step, reason, trimmed, found = run_steps(doc["text"], steps)
        if step:
            record, keys = doc | {"text": text, "filter": step, "reason": reason}, b""
        else:
            record, keys = doc | {"text": text}, dedup_keys(text, config).tobytes()
        out["line"].append(json_line(record))
        out["step"].append(step)
        out["reason"].append(reason)
        out["trimmed"].append(json.dumps(trimmed))
        out["pii"].append(json.dumps(found))
        out["keys"].append(keys)
        out["size"].append(len(line.encode("utf-8")) + 1)
    return {name: np.array(values, dtype=object) for name, values in out.items()}


def run_steps(text: str, steps: list[tuple[str, Step]]) -> tuple[str, str, str, dict, dict]:
    """(text, removing step or "", its reason, characters trimmed by step, pii matches)."""
    trimmed, found = {}, {}
    for name, step in steps:
        kept, reason, matches = step(text)
        found |= matches
        if kept is None:
            return text, name, reason, trimmed, found
        if len(kept) != len(text):
            trimmed[name] = len(text) - len(kept)
        text = kept
    return text, "", "", trimmed, found


@functools.lru_cache(maxsize=4)
def document_steps(cfg_json: str) -> list[tuple[str, Step]]:
    """The configured document steps, built once per process (a worker reuses them)."""
    filter = FilterConfig(**json.loads(cfg_json))
    return [(name, build_step(name, filter)) for name in filter.steps if name not in DEDUP_STEPS]


def build_step(name: str, filter: FilterConfig) -> Step:
    if name == "language":
        return language_step(tuple(filter.language.languages), filter.language.min_confidence)
    if name == "pii":
        actions = filter.pii.model_dump()
        return lambda text: pii_step(text, actions)
    return datatrove_step(name, getattr(filter, name).model_dump())


def language_step(languages: tuple[str, ...], min_confidence: float) -> Step:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    def step(text: str):
        language, probability = identifier.classify(text)
        if language in languages and probability >= min_confidence:
            return text, "", {}
        return None, f"{language} ({probability:.2f})", {}
    return step


def pii_step(text: str, actions: dict[str, str]):
    scrubbed, found, dropped_for = pii.scrub(text, actions)
    if dropped_for:
        return None, f"contains {dropped_for.replace('_', ' ')}", found
    return scrubbed, "", found


def datatrove_rule(name: str, params: dict):
    """datatrove's filter for step `name` with params.yaml's thresholds (its words are shared:
    datatrove caches the last texts' splits)."""
    import datatrove.pipeline.filters as filters

    if name == "gopher_repetition":  # datatrove takes tuples of (n, share)
        params = params | {k: tuple(map(tuple, params[k])) for k in ("top_n_grams", "dup_n_grams")}
    return getattr(filters, DATATROVE[name])(**params)


def datatrove_step(name: str, params: dict) -> Step:
    from datatrove.data import Document

    rule = datatrove_rule(name, params)

    def step(text: str):
        # datatrove splits lines on "\n" only: judged with "\r\n", every line would end in "\r".
        judged = text.replace("\r\n", "\n")
        doc = Document(text=judged, id="")
        verdict = rule.filter(doc)  # True, or (False, reason); C4 also rewrites doc.text
        if verdict is True and doc.text == judged:
            return text, "", {}  # as written
        if verdict is True:  # as C4 trimmed it, with the document's own line ends
            return (doc.text.replace("\n", "\r\n") if judged != text else doc.text), "", {}
        return None, verdict[1] if isinstance(verdict, tuple) else name, {}
    return step
