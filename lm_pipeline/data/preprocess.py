"""Stage 3, preprocess: dedupe, split by document, train the tokenizer, write token files.

Output (data/processed/, written atomically as one folder):
  tokenizer.json            the trained tokenizer (HF `tokenizers` format)
  {train,val,test}.bin      contiguous token ids, each document followed by <|endoftext|>
  meta.json                 vocab size, dtype, token and document counts, tokenizer hash
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lm_pipeline.config import Config
from lm_pipeline.data.ingest import DOCUMENTS_FILE, read_documents
from lm_pipeline.data.tokenizer import eot_id, train_tokenizer
from lm_pipeline.io import atomic_path, read_json, write_json
from lm_pipeline.lineage import file_sha256

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"


@dataclass(frozen=True)
class PreprocessResult:
    path: Path
    vocab_size: int
    tokens: dict[str, int]
    duplicates_dropped: int


def run(cfg: Config) -> PreprocessResult:
    docs, dropped = dedupe(read_documents(cfg.data.raw_dir / DOCUMENTS_FILE))
    splits = {name: [] for name in SPLITS}
    for doc in docs:
        splits[assign_split(doc["text"], cfg)].append(doc["text"])
    for name, texts in splits.items():
        if not texts:
            raise ValueError(f"preprocess: the {name} split is empty ({len(docs)} documents); "
                             "add documents or raise split fractions in params.yaml")
    tokenizer = train_tokenizer(splits["train"], cfg.tokenizer)
    out = cfg.data.processed_dir
    with atomic_path(out) as tmp:
        tmp.mkdir()
        tokenizer.save(str(tmp / TOKENIZER_FILE))
        dtype = token_dtype(tokenizer.get_vocab_size())
        tokens = {name: write_tokens(tokenizer, texts, tmp / f"{name}.bin", dtype)
                  for name, texts in splits.items()}
        meta = {
            "vocab_size": tokenizer.get_vocab_size(),
            "dtype": np.dtype(dtype).name,
            "eot_id": eot_id(tokenizer),
            "tokenizer_kind": cfg.tokenizer.kind,
            "tokenizer_sha256": file_sha256(tmp / TOKENIZER_FILE),
            "tokens": tokens,
            "documents": {name: len(texts) for name, texts in splits.items()},
            "characters": {name: sum(map(len, texts)) for name, texts in splits.items()},
            "duplicates_dropped": dropped,
        }
        write_json(tmp / META_FILE, meta)
    log.info("preprocess: vocab %d, tokens %s, %d duplicates dropped -> %s",
             meta["vocab_size"], tokens, dropped, out)
    return PreprocessResult(out, meta["vocab_size"], tokens, dropped)


def dedupe(docs) -> tuple[list[dict], int]:
    """Keep the first document of each exact text."""
    seen, kept, dropped = set(), [], 0
    for doc in docs:
        digest = hashlib.sha256(doc["text"].encode("utf-8", "surrogatepass")).digest()
        if digest in seen:
            dropped += 1
            continue
        seen.add(digest)
        kept.append(doc)
    return kept, dropped


def assign_split(text: str, cfg: Config) -> str:
    """Seeded hash of the text -> a stable split, independent of document order."""
    digest = hashlib.sha256(f"{cfg.split.seed}\0{text}".encode("utf-8", "surrogatepass")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < cfg.split.test_fraction:
        return "test"
    if u < cfg.split.test_fraction + cfg.split.val_fraction:
        return "val"
    return "train"


def token_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def write_tokens(tokenizer, texts: list[str], path: Path, dtype) -> int:
    eot = eot_id(tokenizer)
    ids = [np.append(np.asarray(e.ids, dtype=dtype), dtype(eot)) for e in tokenizer.encode_batch(texts)]
    stream = np.concatenate(ids)
    stream.tofile(path)
    return int(stream.size)


def load_tokens(processed_dir: Path, split: str) -> np.ndarray:
    """Memory-map a split's token file."""
    meta = read_json(processed_dir / META_FILE)
    return np.memmap(processed_dir / f"{split}.bin", dtype=meta["dtype"], mode="r")


def split_documents(tokens: np.ndarray, eot: int) -> list[np.ndarray]:
    """Cut a token stream back into documents at <|endoftext|> (the separator is dropped)."""
    ends = np.flatnonzero(tokens == eot)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokens[s:e] for s, e in zip(starts, ends, strict=True)]
