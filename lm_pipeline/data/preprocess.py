"""Stage 3, preprocess: dedupe, split by document, train the tokenizer, write token shards.

Streams data/raw/documents.jsonl twice and never holds the corpus in memory: once to train the
tokenizer on the training split (a seeded sample of it when the corpus is larger than
tokenizer.max_train_chars), once to encode every document in batches, on all cores (the
tokenizer's own threads) or as Ray Data on every CPU of a cluster (data.preprocess_on; encode.py),
and write fixed-size shards.

The output, data/processed/ (its format: data/processed.py), is written atomically as one folder.
With train.init_from, the parent model is pinned in it and its tokenizer reused; a corpus that
tokenizer does not cover is refused (see model/parent.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from lm_pipeline.config import Config, TokenizerConfig, corpus_description
from lm_pipeline.data.documents import documents_path, read_documents
from lm_pipeline.data.encode import COLUMNS, local_batches, ray_batches, use_ray
from lm_pipeline.data.processed import ProcessedMeta, token_dtype, tokenizer_path, write_meta
from lm_pipeline.data.quality import check_validation_passed
from lm_pipeline.data.shards import ShardWriter
from lm_pipeline.data.split import SPLITS, assign_split, stable_fraction, text_digest
from lm_pipeline.data.tokenizer import UNK, eot_id, train_tokenizer
from lm_pipeline.io import atomic_path, remove_leftovers
from lm_pipeline.lineage import file_sha256
from lm_pipeline.model import parent as parents
from lm_pipeline.model.folder import RUN_FILE, read_run_info

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class PreprocessResult:
    path: Path
    vocab_size: int
    tokens: dict[str, int]
    duplicates_dropped: int


def run(cfg: Config) -> PreprocessResult:
    out, source = cfg.data.processed_dir, documents_path(cfg.data.raw_dir)
    check_validation_passed(cfg.validate_.report_dir)
    remove_leftovers(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        parent = parents.fetch(cfg, tmp / parents.PARENT_DIR) if cfg.train.init_from else None
        if parent:
            tokenizer = Tokenizer.from_file(str(tokenizer_path(tmp / parents.PARENT_DIR)))
            log.info("preprocess: fine-tuning %s: its tokenizer (%d tokens) encodes this corpus; "
                     "the tokenizer section of params.yaml is not used", parents.describe(parent),
                     tokenizer.get_vocab_size())
        else:
            tokenizer = train_tokenizer(tokenizer_sample(source, cfg), cfg.tokenizer)
        tokenizer.save(str(tokenizer_path(tmp)))
        dtype = token_dtype(tokenizer.get_vocab_size())
        writers = {name: ShardWriter(tmp / name, dtype, cfg.data.shard_tokens) for name in SPLITS}
        encode = ray_batches if use_ray(cfg, source) else local_batches
        counts, duplicates = write_shards(encode(source, tokenizer, cfg, dtype), tokenizer, writers)
        for name in SPLITS:
            if not counts["documents"][name]:
                raise ValueError(f"preprocess: the {name} split is empty ({sum(counts['documents'].values())}"
                                 " documents); add documents or raise split fractions in params.yaml")
        coverage = tokenizer_coverage(counts)
        if parent:
            check_parent_tokenizer_covers(coverage, tmp / parents.PARENT_DIR, parent, cfg.tokenizer)
        meta = ProcessedMeta(
            source=corpus_description(cfg.data.source, cfg.data.sources),
            vocab_size=tokenizer.get_vocab_size(),
            dtype=np.dtype(dtype).name,
            eot_id=eot_id(tokenizer),
            tokenizer_kind="parent" if parent else cfg.tokenizer.kind,
            tokenizer_sha256=file_sha256(tokenizer_path(tmp)),
            shards={name: writer.close() for name, writer in writers.items()},
            tokens=counts["tokens"], documents=counts["documents"], characters=counts["characters"],
            text_bytes=counts["text_bytes"], unknown=counts["unknown"],
            **coverage,
            duplicates_dropped=duplicates,
            parent=parent,
        )
        write_meta(tmp, meta)
    log.info("preprocess: vocab %d, tokens %s in shards of %d, %d duplicates dropped -> %s",
             meta.vocab_size, meta.tokens, cfg.data.shard_tokens, duplicates, out)
    return PreprocessResult(out, meta.vocab_size, meta.tokens, duplicates)


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


def check_parent_tokenizer_covers(coverage: dict, parent_dir: Path, parent: dict,
                                  limits: TokenizerConfig) -> None:
    """Refuse a corpus that needs another tokenizer than the parent's: many <unk> tokens, or far
    worse compression than on the parent's own corpus (e.g. another script under byte-level BPE)."""
    name = parents.describe(parent)
    problems = []
    if coverage["unknown_share"] > limits.max_unknown_share:
        problems.append(f"{coverage['unknown_share']:.2%} of its tokens are {UNK} (limit "
                        f"tokenizer.max_unknown_share {limits.max_unknown_share:.2%}; "
                        f"e.g. {', '.join(map(repr, coverage['unknown_examples']))})")
    before = read_run_info(parent_dir).get("chars_per_token") if (parent_dir / RUN_FILE).is_file() else None
    if before and coverage["chars_per_token"] < limits.min_relative_compression * before:
        problems.append(f"it encodes at {coverage['chars_per_token']:.2f} characters per token against "
                        f"{before:.2f} on the parent's corpus (limit tokenizer.min_relative_compression "
                        f"{limits.min_relative_compression})")
    if problems:
        raise parents.ParentError(
            f"preprocess: this corpus needs a different tokenizer than {name}'s: {'; '.join(problems)}. "
            "Fine-tuning must reuse the parent's tokenizer: train from scratch instead (drop "
            "train.init_from)")
