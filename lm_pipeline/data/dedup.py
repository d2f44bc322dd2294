"""Exact and near duplicates across a whole corpus, deterministic and in bounded memory.

Each kept document gets keys: its text digest (exact) and one key per MinHash LSH band of its
word n-grams (near: filter.near_dedup.bands bands of rows each, so two documents of Jaccard
similarity s share a band with probability 1 - (1 - s^rows)^bands; 14 x 8, as in FineWeb and
datatrove, is 50% at s = 0.72 and 99% at s = 0.85). A document is a duplicate when an earlier
one shares a key with it: the first copy in corpus order is kept, so the same corpus keeps the
same documents whatever the number of workers.

The keys are written to a file as the documents stream past; `duplicate_of` then reads one
column at a time, in pieces, so memory grows by some 40 bytes a document (the column and
np.unique's index arrays), not with the text.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from lm_pipeline.config import FilterConfig
from lm_pipeline.data.features import minhash
from lm_pipeline.data.split import text_digest


def dedup_keys(text: str, filter: FilterConfig) -> np.ndarray:
    """[exact key, near key per band] as uint64 (only the enabled steps' keys)."""
    keys = []
    if "exact_dedup" in filter.steps:
        keys.append(int.from_bytes(text_digest(text), "little"))
    if "near_dedup" in filter.steps:
        near = filter.near_dedup
        signature = minhash([text], near.seed, near.bands * near.rows, near.ngram)[0]
        keys += [band_key(signature[b * near.rows:(b + 1) * near.rows]) for b in range(near.bands)]
    return np.array(keys, dtype=np.uint64)


def band_key(rows: np.ndarray) -> int:
    return int.from_bytes(hashlib.blake2b(rows.tobytes(), digest_size=8).digest(), "little")


class KeyFile:
    """The keys of every candidate document, a row each, appended as they stream past, and read
    back a column at a time."""

    ROWS_PER_READ = 1 << 16

    def __init__(self, path: Path, width: int):
        self.path, self.width, self.rows = Path(path), width, 0
        self.file = open(self.path, "wb")

    def append(self, keys: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(keys, dtype=np.uint64).tobytes())
        self.rows += 1

    def close(self) -> KeyFile:
        self.file.close()
        return self

    def column(self, c: int) -> np.ndarray:
        out = np.empty(self.rows, dtype=np.uint64)
        with open(self.path, "rb") as f:
            for start in range(0, self.rows, self.ROWS_PER_READ):
                count = min(self.ROWS_PER_READ, self.rows - start) * self.width
                rows = np.fromfile(f, dtype=np.uint64, count=count)
                out[start:start + len(rows) // self.width] = rows.reshape(-1, self.width)[:, c]
        return out


def duplicate_of(keys: KeyFile, columns: range) -> np.ndarray:
    """For each row, the first earlier row sharing a key in `columns` with it, or -1."""
    earliest = np.arange(keys.rows)
    for c in columns:
        _, first, inverse = np.unique(keys.column(c), return_index=True, return_inverse=True)
        earliest = np.minimum(earliest, first[inverse])  # np.unique's index is the first occurrence
    return np.where(earliest < np.arange(keys.rows), earliest, -1)
