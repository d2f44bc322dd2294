"""The processed-data folder (data/processed/), written by preprocess and read by every later stage.

  tokenizer.json              the trained tokenizer (HF `tokenizers` format)
  {train,val,test}/NNNNN.bin  token shards; each document ends with <|endoftext|>
  meta.json                   the index (shards per split), vocab size, dtype, counts, tokenizer hash
  parent/                     with train.init_from: the model to fine-tune, pinned (model/parent.py)
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from lm_pipeline.data.shards import TokenShards
from lm_pipeline.data.tokenizer import TOKENIZER_FILE
from lm_pipeline.io import read_json, write_json

META_FILE = "meta.json"


@dataclass(frozen=True)
class ProcessedMeta:
    """meta.json: the shard index, and what the tokenizer made of the corpus (per split)."""

    source: str  # data.source: the corpus these tokens came from
    vocab_size: int
    dtype: str  # of the token shards: uint16, or uint32 for larger vocabularies
    eot_id: int  # <|endoftext|>, which ends every document
    tokenizer_kind: str  # bpe, char, or parent (fine-tuning reuses the parent's)
    tokenizer_sha256: str
    shards: dict[str, list[dict]]  # split -> [{"file": "train/00000.bin", "tokens": n}, ...]
    tokens: dict[str, int]
    documents: dict[str, int]
    characters: dict[str, int]
    text_bytes: dict[str, int]  # UTF-8 bytes of the documents' text (bits per byte divides by them)
    unknown: dict[str, int]  # <unk> tokens (a reused tokenizer may not cover a new corpus)
    chars_per_token: float
    unknown_share: float
    unknown_examples: list[str]
    duplicates_dropped: int
    parent: dict | None = None  # the pinned parent's record, when fine-tuning
    canaries: list[dict] = field(default_factory=list)  # [{prefix, secret}] planted in train (canaries.py)
    canary_repeats: int = 0  # times each was planted: the last canaries x repeats train documents

    def to_dict(self) -> dict:
        return asdict(self)


def tokenizer_path(processed_dir: Path) -> Path:
    return Path(processed_dir) / TOKENIZER_FILE


def write_meta(processed_dir: Path, meta: ProcessedMeta) -> None:
    write_json(Path(processed_dir) / META_FILE, meta.to_dict())


def read_meta(processed_dir: Path) -> ProcessedMeta:
    path = Path(processed_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no processed data; run `lmp preprocess` (or `dvc repro`) first")
    data = read_json(path)
    known = {f.name for f in fields(ProcessedMeta)}
    required = {f.name for f in fields(ProcessedMeta) if f.default is MISSING}
    unknown, missing = sorted(set(data) - known), sorted(required - set(data))
    if unknown or missing:
        raise ValueError(f"{path}: written by another version (unknown keys {unknown}, missing keys "
                         f"{missing}); rerun `lmp preprocess`")
    return ProcessedMeta(**data)


def token_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def load_tokens(processed_dir: Path, split: str) -> TokenShards:
    """A split's token shards, memory-mapped, as one sequence."""
    meta = read_meta(processed_dir)
    return TokenShards(Path(processed_dir), meta.shards[split], meta.dtype)


def split_documents(tokens, eot: int) -> list[np.ndarray]:
    """Cut a token stream back into documents at <|endoftext|> (the separator is dropped)."""
    tokens = np.asarray(tokens)
    ends = np.flatnonzero(tokens == eot)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokens[s:e] for s, e in zip(starts, ends, strict=True)]


def load_documents(processed_dir: Path, split: str) -> list[np.ndarray]:
    """A split's documents as token arrays (the test split: what evaluation and the champion gate score)."""
    return split_documents(load_tokens(processed_dir, split), read_meta(processed_dir).eot_id)
