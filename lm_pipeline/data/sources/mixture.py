"""data.sources: several corpus sources read as one, each sampled to its weight's share of the
characters, without repeating a document."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np

from lm_pipeline.config import MixSource
from lm_pipeline.data.sources.corpus import iter_documents
from lm_pipeline.data.sources.problems import IngestError, Problem


class Mixture:
    """data.sources read as one corpus. A first pass measures each source (its documents'
    lengths, and a sha256 of their texts, for lineage); then each source is sampled down to its
    weight's share of the characters (keep_masks) and streamed again, its documents labelled
    `mixture: <name>`. Bad input is reported by the first pass only."""

    def __init__(self, sources: list[MixSource], seed: int, min_doc_chars: int, max_bytes: int):
        self.sources, self.seed, self.stats = sources, seed, []
        self.min_doc_chars, self.max_bytes = min_doc_chars, max_bytes

    def read(self, spec: MixSource) -> Iterator[dict | Problem]:
        return iter_documents(spec.source, self.min_doc_chars, self.max_bytes)

    def documents(self) -> Iterator[dict | Problem]:
        lengths = []
        for spec in self.sources:
            digest, sizes = hashlib.sha256(), []
            for item in self.read(spec):
                if isinstance(item, Problem):
                    yield item
                    continue
                digest.update(item["text"].encode("utf-8", "surrogatepass") + b"\0")
                sizes.append(len(item["text"]))
            if not sizes:
                raise IngestError(f"data.sources: {spec.label} has no usable documents")
            lengths.append(np.array(sizes, dtype=np.int64))
            self.stats.append({"name": spec.label, "source": spec.source, "sha256": digest.hexdigest(),
                               "documents_read": len(sizes), "characters_read": int(sum(sizes))})
        weights = [spec.weight for spec in self.sources]
        masks = keep_masks(lengths, weights, self.seed)
        for spec, sizes, keep, stats in zip(self.sources, lengths, masks, self.stats, strict=True):
            stats |= {"weight": spec.weight / sum(weights), "documents": int(keep.sum()),
                      "characters": int(sizes[keep].sum())}
            documents = (item for item in self.read(spec) if not isinstance(item, Problem))
            for kept, item in zip(keep, documents, strict=True):
                if kept:
                    yield item | {"mixture": spec.label}
        total = sum(stats["characters"] for stats in self.stats)
        for stats in self.stats:
            stats["share"] = stats["characters"] / total


def keep_masks(lengths: list[np.ndarray], weights: list[float], seed: int) -> list[np.ndarray]:
    """Which documents of each source a mixture keeps. The mixture is the largest one every source
    can fill at its weight without repeating a document (the scarcest source gives all of its);
    each source gives a seeded random subset, its documents taken in a shuffled order while they
    fit its share of the characters."""
    shares = np.asarray(weights, dtype=float) / sum(weights)
    size = min(float(sizes.sum()) / share for sizes, share in zip(lengths, shares, strict=True))
    masks = []
    for k, (sizes, share) in enumerate(zip(lengths, shares, strict=True)):
        order = np.random.default_rng([seed, k]).permutation(len(sizes))
        fits = np.cumsum(sizes[order]) <= share * size * (1 + 1e-9)
        mask = np.zeros(len(sizes), dtype=bool)
        mask[order[fits]] = True
        masks.append(mask)
    return masks
