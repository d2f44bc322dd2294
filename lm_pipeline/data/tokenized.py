"""The corpus through the tokenizer: which texts train it (tokenizer_sample), each encoded document
written to its split's shards once (write_shards), and how well the tokenizer covers them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from lm_pipeline.config import Config
from lm_pipeline.data.documents import read_documents
from lm_pipeline.data.encode import COLUMNS
from lm_pipeline.data.shards import ShardWriter
from lm_pipeline.data.split import SPLITS, assign_split, stable_fraction, text_digest
from lm_pipeline.data.tokenizer import UNK


class UniqueTexts:
    """The texts of documents.jsonl, streamed, the first copy of each text only."""

    def __init__(self, path: Path):
        self.path, self.duplicates = path, 0

    def __iter__(self) -> Iterator[str]:
        seen: set[bytes] = set()  # 8-byte digests: the one thing that grows with the corpus
        self.duplicates = 0
        for doc in read_documents(self.path):
            digest = text_digest(doc["text"])
            if digest in seen:
                self.duplicates += 1
                continue
            seen.add(digest)
            yield doc["text"]


def tokenizer_sample(source: Path, cfg: Config) -> Iterator[str]:
    """Training-split texts for the tokenizer: all of them, or a seeded share of about
    tokenizer.max_train_chars when the corpus is larger (sized from the file, no extra pass)."""
    share = min(1.0, cfg.tokenizer.max_train_chars / max(source.stat().st_size, 1))
    for text in UniqueTexts(source):
        sampled = share == 1.0 or stable_fraction(text, "tok") < share
        if sampled and assign_split(text, cfg.split) == "train":
            yield text


def write_shards(batches: Iterable[dict], tokenizer: Tokenizer, writers: dict[str, ShardWriter]):
    """Append each encoded document (encode.py's columns) to its split's shards, first copies only.

    Returns the counts per split of tokens, documents, characters, UTF-8 bytes and <unk> tokens
    (with a few examples of the text they replaced: a reused tokenizer may not cover a new corpus),
    and how many duplicates were dropped."""
    unk = tokenizer.token_to_id(UNK)
    counts = {key: dict.fromkeys(SPLITS, 0)
              for key in ("tokens", "documents", "characters", "text_bytes", "unknown")}
    counts["unknown_examples"] = []
    seen: set[bytes] = set()  # 8-byte digests: the one thing that grows with the corpus
    duplicates = 0
    for batch in batches:
        for digest, split, ids, characters, text_bytes, unknown, text in zip(
                *(batch[name] for name in COLUMNS), strict=True):
            if digest in seen:
                duplicates += 1
                continue
            seen.add(digest)
            ids = np.frombuffer(ids, dtype=writers[split].dtype)
            writers[split].append(ids)
            counts["tokens"][split] += len(ids)
            counts["documents"][split] += 1
            counts["characters"][split] += int(characters)
            counts["text_bytes"][split] += int(text_bytes)
            counts["unknown"][split] += int(unknown)
            if unknown and len(counts["unknown_examples"]) < 5:  # offsets need the slower encode
                # One span per id but the final <|endoftext|>.
                spans = tokenizer.encode(text, add_special_tokens=False).offsets
                unknown_spans = [span for i, span in zip(ids[:-1], spans, strict=True) if i == unk]
                counts["unknown_examples"] += [text[a:b] for a, b in unknown_spans[:2]]
    return counts, duplicates


def tokenizer_coverage(counts: dict) -> dict:
    """How well the tokenizer covers the corpus: characters per token, share of <unk> tokens."""
    tokens = sum(counts["tokens"].values())
    return {"chars_per_token": sum(counts["characters"].values()) / tokens,
            "unknown_share": sum(counts["unknown"].values()) / tokens,
            "unknown_examples": counts["unknown_examples"]}
