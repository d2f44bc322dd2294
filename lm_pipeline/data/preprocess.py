"""Stage 3, preprocess: dedupe, split by document, train the tokenizer, write token shards.

Streams data/raw/documents.jsonl twice and never holds the corpus in memory: once to train the
tokenizer on the training split (a seeded sample of it when the corpus is larger than
tokenizer.max_train_chars), once to encode every document in batches on all cores (the
tokenizer's own threads) and write fixed-size shards.

Output (data/processed/, written atomically as one folder):
  tokenizer.json              the trained tokenizer (HF `tokenizers` format)
  {train,val,test}/NNNNN.bin  token shards of data.shard_tokens ids; each document ends with <|endoftext|>
  meta.json                   the index (shards per split) plus vocab size, dtype, counts, tokenizer hash
  parent/                     with train.init_from: the model to fine-tune, pinned (its tokenizer is
                              reused, and a corpus it does not fit is refused; see model/parent.py)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from lm_pipeline.config import Config
from lm_pipeline.data.ingest import DOCUMENTS_FILE, read_documents
from lm_pipeline.data.shards import ShardWriter, TokenShards
from lm_pipeline.data.tokenizer import UNK, eot_id, train_tokenizer
from lm_pipeline.io import atomic_path, read_json, remove_leftovers, write_json
from lm_pipeline.lineage import file_sha256
from lm_pipeline.model import parent as parents
from lm_pipeline.tracking import RUN_FILE

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"
ENCODE_BATCH_CHARS = 2_000_000  # text per encode_batch call: enough to keep every core busy


@dataclass(frozen=True)
class PreprocessResult:
    path: Path
    vocab_size: int
    tokens: dict[str, int]
    duplicates_dropped: int


def run(cfg: Config) -> PreprocessResult:
    out, source = cfg.data.processed_dir, cfg.data.raw_dir / DOCUMENTS_FILE
    remove_leftovers(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        parent = parents.fetch(cfg, tmp / parents.PARENT_DIR) if cfg.train.init_from else None
        if parent:
            tokenizer = Tokenizer.from_file(str(tmp / parents.PARENT_DIR / TOKENIZER_FILE))
            log.info("preprocess: fine-tuning %s: its tokenizer (%d tokens) encodes this corpus; "
                     "the tokenizer section of params.yaml is not used", parents.describe(parent),
                     tokenizer.get_vocab_size())
        else:
            tokenizer = train_tokenizer(tokenizer_sample(source, cfg), cfg.tokenizer)
        tokenizer.save(str(tmp / TOKENIZER_FILE))
        dtype = token_dtype(tokenizer.get_vocab_size())
        writers = {name: ShardWriter(tmp / name, dtype, cfg.data.shard_tokens) for name in SPLITS}
        texts = UniqueTexts(source)
        counts = encode_into_shards(texts, tokenizer, writers, cfg)
        for name in SPLITS:
            if not counts["documents"][name]:
                raise ValueError(f"preprocess: the {name} split is empty ({sum(counts['documents'].values())}"
                                 " documents); add documents or raise split fractions in params.yaml")
        fit = tokenizer_fit(counts)
        if parent:
            check_tokenizer_fits(fit, tmp / parents.PARENT_DIR, parent, cfg)
        meta = {
            "vocab_size": tokenizer.get_vocab_size(),
            "dtype": np.dtype(dtype).name,
            "eot_id": eot_id(tokenizer),
            "tokenizer_kind": "parent" if parent else cfg.tokenizer.kind,
            "tokenizer_sha256": file_sha256(tmp / TOKENIZER_FILE),
            "shards": {name: writer.close() for name, writer in writers.items()},
            **{key: value for key, value in counts.items() if key != "unknown_examples"},
            **fit,
            "duplicates_dropped": texts.duplicates,
            "parent": parent,
        }
        write_json(tmp / META_FILE, meta)
    log.info("preprocess: vocab %d, tokens %s in shards of %d, %d duplicates dropped -> %s",
             meta["vocab_size"], meta["tokens"], cfg.data.shard_tokens, texts.duplicates, out)
    return PreprocessResult(out, meta["vocab_size"], meta["tokens"], texts.duplicates)


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
        if assign_split(text, cfg) == "train" and (share == 1.0 or stable_fraction(text, "tok") < share):
            yield text


def encode_into_shards(texts, tokenizer, writers: dict[str, ShardWriter], cfg: Config) -> dict:
    """Encode batches of texts on all cores and append each to its split's shards.

    Counts tokens, documents and characters per split, and <unk> tokens (with a few examples of
    the text they replaced): a reused tokenizer may not cover a new corpus."""
    eot, unk = eot_id(tokenizer), tokenizer.token_to_id(UNK)
    counts = {key: dict.fromkeys(SPLITS, 0) for key in ("tokens", "documents", "characters", "unknown")}
    counts["unknown_examples"] = []
    batch: list[tuple[str, str]] = []
    size = 0

    def flush() -> None:
        encodings = tokenizer.encode_batch_fast([text for _, text in batch])
        for (split, text), encoding in zip(batch, encodings, strict=True):
            ids = np.append(np.asarray(encoding.ids, dtype=writers[split].dtype), eot)
            writers[split].append(ids)
            counts["tokens"][split] += len(ids)
            counts["documents"][split] += 1
            counts["characters"][split] += len(text)
            if unk is not None and (unknown := int(np.count_nonzero(ids == unk))):
                counts["unknown"][split] += unknown
                if len(counts["unknown_examples"]) < 5:  # offsets need the slower encode
                    spans = tokenizer.encode(text).offsets  # one per id but the final <|endoftext|>
                    unknown_spans = [span for i, span in zip(ids[:-1], spans, strict=True) if i == unk]
                    counts["unknown_examples"] += [text[a:b] for a, b in unknown_spans[:2]]
        batch.clear()

    for text in texts:
        batch.append((assign_split(text, cfg), text))
        size += len(text)
        if size >= ENCODE_BATCH_CHARS:
            flush()
            size = 0
    if batch:
        flush()
    return counts


def tokenizer_fit(counts: dict) -> dict:
    """How well the tokenizer fits the corpus: characters per token, share of <unk> tokens."""
    tokens = sum(counts["tokens"].values())
    return {"chars_per_token": sum(counts["characters"].values()) / tokens,
            "unknown_share": sum(counts["unknown"].values()) / tokens,
            "unknown_examples": counts["unknown_examples"]}


def check_tokenizer_fits(fit: dict, parent_dir: Path, parent: dict, cfg: Config) -> None:
    """Refuse a corpus that needs another tokenizer than the parent's: many <unk> tokens, or far
    worse compression than on the parent's own corpus (e.g. another script under byte-level BPE)."""
    name, limits = parents.describe(parent), cfg.tokenizer
    problems = []
    if fit["unknown_share"] > limits.max_unknown_share:
        problems.append(f"{fit['unknown_share']:.2%} of its tokens are {UNK} (limit "
                        f"tokenizer.max_unknown_share {limits.max_unknown_share:.2%}; "
                        f"e.g. {', '.join(map(repr, fit['unknown_examples']))})")
    parent_run = parent_dir / RUN_FILE
    before = read_json(parent_run).get("chars_per_token") if parent_run.is_file() else None
    if before and fit["chars_per_token"] < limits.min_relative_compression * before:
        problems.append(f"it encodes at {fit['chars_per_token']:.2f} characters per token against "
                        f"{before:.2f} on the parent's corpus (limit tokenizer.min_relative_compression "
                        f"{limits.min_relative_compression})")
    if problems:
        raise parents.ParentError(
            f"preprocess: this corpus needs a different tokenizer than {name}'s: {'; '.join(problems)}. "
            "Fine-tuning must reuse the parent's tokenizer: train from scratch instead (drop "
            "train.init_from)")


def text_digest(text: str) -> bytes:
    """8 bytes that tell texts apart (exact duplicates), for any text, lone surrogates included."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def stable_fraction(text: str, salt: str) -> float:
    """A number in [0, 1) fixed by the text (and salt): seeded, order-independent selection."""
    return int.from_bytes(text_digest(f"{salt}\0{text}"), "big") / 2**64


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


def load_tokens(processed_dir: Path, split: str) -> TokenShards:
    """A split's token shards, memory-mapped, as one sequence."""
    meta = read_json(processed_dir / META_FILE)
    return TokenShards(processed_dir, meta["shards"][split], meta["dtype"])


def split_documents(tokens, eot: int) -> list[np.ndarray]:
    """Cut a token stream back into documents at <|endoftext|> (the separator is dropped)."""
    tokens = np.asarray(tokens)
    ends = np.flatnonzero(tokens == eot)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokens[s:e] for s, e in zip(starts, ends, strict=True)]
