"""Text features the data checks measure, as pure functions of text: character classes, common
words, word n-gram shingles, MinHash near duplicates and n-gram overlap between texts."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

import numpy as np

from lm_pipeline.data.split import text_digest

CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 controls but \t \n \r
INVALID_UTF8 = re.compile(r"[\ud800-\udfff\ufffd]")  # undecodable bytes (surrogates) or U+FFFD
WORD = re.compile(r"\w+")
# The most frequent English words: prose has many, code, tables and binary junk almost none.
COMMON_WORDS = frozenset(
    "the of and to a in is it that for as with was on be by this are or not from at an which "
    "but have has can if will all one their they its there been more so when no than other".split())


def control_share(text: str) -> float:
    return len(CONTROL_CHARS.findall(text)) / max(len(text), 1)


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


def minhash(texts: list[str], seed: int, perms: int, n: int = 5) -> np.ndarray:
    """(len(texts), perms) MinHash signatures of the texts' word n-grams: the same seed gives the
    same signatures on any machine."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 63, size=perms, dtype=np.uint64) | np.uint64(1)  # odd: a bijection
    b = rng.integers(0, 1 << 63, size=perms, dtype=np.uint64)
    # One random permutation of the hash space per column (multiply-add, wrapping mod 2**64).
    if not texts:
        return np.zeros((0, perms), np.uint64)
    return np.stack([(np.outer(shingles(t, n), a) + b).min(axis=0) for t in texts])


def near_duplicates(texts: list[str], jaccard: float, seed: int, perms: int = 64, bands: int = 16
                    ) -> list[bool]:
    """MinHash + LSH: True for a text whose word 5-grams overlap an earlier text's by `jaccard`."""
    signatures = minhash(texts, seed, perms)
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


def overlap_shares(texts: dict[int, str], others: Iterable[str], n: int) -> dict[int, float]:
    """For each of `texts`, the share of its word n-grams that occur in any of `others` (a stream,
    read once: the training split of a whole corpus)."""
    grams = {i: shingles(text, n) for i, text in texts.items()}
    if not grams:
        return {}
    wanted = np.unique(np.concatenate(list(grams.values())))
    found = np.zeros(len(wanted), dtype=bool)
    for other in others:
        found |= np.isin(wanted, shingles(other, n), assume_unique=True)
    present = wanted[found]
    return {i: float(np.isin(g, present, assume_unique=True).mean()) for i, g in grams.items()}
