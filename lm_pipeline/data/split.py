"""Text digests and the seeded train/val/test split: a document's split is a function of its text.

Shared by validation (contamination is measured across the split) and preprocessing (which
writes it), so both always agree on which document is test.
"""

from __future__ import annotations

import hashlib

from lm_pipeline.config import SplitConfig

SPLITS = ("train", "val", "test")


def text_digest(text: str) -> bytes:
    """8 bytes that tell texts apart (exact duplicates), for any text, lone surrogates included."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def stable_fraction(text: str, salt: str) -> float:
    """A number in [0, 1) fixed by the text (and salt): seeded, order-independent selection."""
    return int.from_bytes(text_digest(f"{salt}\0{text}"), "big") / 2**64


def assign_split(text: str, split: SplitConfig) -> str:
    """Seeded hash of the text -> a stable split, independent of document order."""
    digest = hashlib.sha256(f"{split.seed}\0{text}".encode("utf-8", "surrogatepass")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < split.test_fraction:
        return "test"
    if u < split.test_fraction + split.val_fraction:
        return "val"
    return "train"
